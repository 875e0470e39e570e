#!/bin/sh
# Stand-in for the Anaconda installer: the venv made at /opt/conda becomes the default Python.
set -eu
cat > /etc/profile.d/conda.sh <<'PROFILE'
export PATH=/opt/conda/bin:$PATH
PROFILE
ln -sf /opt/conda/bin/python /usr/local/bin/conda-python
/opt/conda/bin/python -c 'import sys; print("env-anaconda:", sys.version.split()[0])'
