# Source this on the lent GPU machine: installs the carried wheels (openai, tenacity and their needs, from
# scripts/device_wheels.py) into /tmp/site and puts them and the repository on PYTHONPATH. Where the call carried .fa4
# (scripts/fa4_bundle.sh), FlashAttention-4 is unpacked into /tmp/fa4 for flex's FLASH backend too.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || return 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
if [ -f .fa4/fa4.tar.xz ]; then
  mkdir -p /tmp/fa4 && tar -C /tmp/fa4 -xJf .fa4/fa4.tar.xz || return 1
  # what the CuTe DSL wheel's .pth file would add in a site directory
  export PYTHONPATH=$PYTHONPATH:/tmp/fa4:/tmp/fa4/nvidia_cutlass_dsl/python_packages
fi
