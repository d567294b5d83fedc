#!/bin/bash
# The GPU check's quick selection and sanitizers at one commit; stages FA4's first wheels for the next call.
cd "$(dirname "$0")/.."
mkdir -p /tmp/fa4 && cp .fa4a/* /tmp/fa4/
bash .devrun/callH.sh
