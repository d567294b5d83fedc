#!/bin/bash
# Stages FA4's first wheels for the next call, then the GPU check's quick selection, sanitizers and one A/B round.
cd "$(dirname "$0")/.."
mkdir -p /tmp/fa4 && cp .fa4a/* /tmp/fa4/
bash .devrun/s28.sh
