#!/usr/bin/env bash
# Debian packages the web and DICOM tests use: Chromium (Playwright drives it; no browser is
# ever downloaded), Orthanc (a real PACS on loopback), dcmtk (storescu/echoscu) and dicom3tools
# (dciodvfy, the third-party validator our DICOM results must pass), PostgreSQL (the service's
# PostgreSQL tests start a private server). Under CI=true a test whose tool is missing fails.
# Installs only what is missing. Without root or sudo it says what is missing and carries on;
# the tests that need a missing tool are then skipped with that reason.
set -uo pipefail
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v Orthanc >/dev/null || need+=(orthanc)
command -v storescu >/dev/null || need+=(dcmtk)
command -v dciodvfy >/dev/null || need+=(dicom3tools)
command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  sudo_cmd=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo_cmd=(sudo -n)
else
  echo "warning: cannot install ${need[*]} (not root, no sudo); their tests will be skipped" >&2
  exit 0
fi
echo "installing ${need[*]} (Debian)" >&2
if ! { "${sudo_cmd[@]}" apt-get update -qq &&
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need[@]}" >/dev/null; }; then
  echo "warning: apt-get could not install ${need[*]}; their tests will be skipped" >&2
fi
exit 0
