# session 49: the whole benchmark at HEAD beside flex (default, max-autotune, FLASH = FlashAttention-4, from the
# carried .fa4) and SDPA, a call per group of shapes: `bash u2.sh SHAPES NAME` (table-NAME.json and .txt)
# (call b ran with its limit at 540 s, not 580, to end within the session's device time)
SHAPES=$1 NAME=$2
save() { tar czf $OUT/res.tgz -C /tmp/res .; }
rm -rf /tmp/res; mkdir -p /tmp/res
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > /tmp/res/gpu.txt
git log --oneline -1 > /tmp/res/rev.txt; git status --short >> /tmp/res/rev.txt
( while sleep 30; do save; done ) & saver=$!
timeout $((580 - SECONDS)) python benchmarks/bench.py --flex default,max-autotune,flash --shapes $SHAPES \
  --out /tmp/res/table-$NAME.json > /tmp/res/table-$NAME.txt 2>&1; echo "rc=$? after ${SECONDS}s" >> /tmp/res/table-$NAME.txt
kill $saver; save
