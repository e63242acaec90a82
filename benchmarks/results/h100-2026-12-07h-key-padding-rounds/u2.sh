# session 51: the two rows the whole table found off their earlier figures, timed again alone beside
# FlashAttention-4: the sliding window (FlashAttention-4 37-41% below the forty-ninth session's) and dilated causal
# (kgen's N2048 15% below). `bash u2.sh [LIMIT]`
LIMIT=${1:-300}
save() { tar czf $OUT/res.tgz -C /tmp/res .; }
rm -rf /tmp/res; mkdir -p /tmp/res
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > /tmp/res/gpu.txt
git log --oneline -1 > /tmp/res/rev.txt; git status --short >> /tmp/res/rev.txt
( while sleep 30; do save; done ) & saver=$!
timeout $((LIMIT - SECONDS)) python benchmarks/bench.py --specs sliding_window,dilated_causal --flex flash \
  --shapes 8x16x2048x128,4x16x4096x64,2x16x8192x128 --out /tmp/res/table.json > /tmp/res/table.txt 2>&1
echo "rc=$? after ${SECONDS}s" >> /tmp/res/table.txt
kill $saver; save
