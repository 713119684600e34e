"""Evaluation: metrics with patient-level bootstrap CIs, DeLong tests, operating points,
calibration, study-level and cross-dataset evaluation, triage simulation and reports.

Modules are imported directly (``from xraytriage.evaluate.metrics import ...``); importing this
package stays cheap (no torch, no matplotlib).
"""
