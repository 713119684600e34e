#!/usr/bin/env bash
# Debian packages the web and DICOM tests use; installs only what is missing.
set -euo pipefail
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v Orthanc >/dev/null || need+=(orthanc)
command -v storescu >/dev/null || need+=(dcmtk)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  sudo_cmd=(sudo)
fi
echo "installing ${need[*]} (Debian)" >&2
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
