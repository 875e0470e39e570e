#!/bin/bash
# Start the app with the tools environment made by env-anaconda.
. /etc/profile.d/conda.sh
exec python /workspace/code/app.py "$@"
