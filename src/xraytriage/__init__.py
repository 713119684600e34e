"""xraytriage: radiograph classifiers turned into a triage worklist.

The package is layered so data flows one way:
io -> preprocess -> data -> models -> train -> (evaluate, explain, triage) -> serving.
"""

__version__ = "0.1.0"
