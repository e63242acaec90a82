# session 52: the sliding window and dilated causal rows timed again beside FlashAttention-4 (the fifty-first
# session's FlashAttention-4 sliding-window figures were far below earlier tables'), and a probe of what
# FlashAttention-4 gets and launches on the sliding window, in two fresh processes a shape. `bash u1.sh [LIMIT]`
LIMIT=${1:-585}
HERE=benchmarks/results/h100-2026-12-07i-sliding-window-fa4
save() { tar czf $OUT/res.tgz -C /tmp/res .; }
rm -rf /tmp/res; mkdir -p /tmp/res
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > /tmp/res/gpu.txt
git log --oneline -1 > /tmp/res/rev.txt; git status --short >> /tmp/res/rev.txt
( while sleep 30; do save; done ) & saver=$!
for shape in 2x16x8192x128 8x16x2048x128; do
  for run in 1 2; do
    timeout 120 python $HERE/fa4_probe.py examples/specs/sliding_window.py $shape /tmp/res/probe-$shape-$run.json \
      > /tmp/res/probe-$shape-$run.txt 2>&1
    echo "rc=$? after ${SECONDS}s" >> /tmp/res/probe-$shape-$run.txt
  done
done
timeout $((LIMIT - 20 - SECONDS)) python benchmarks/bench.py --specs sliding_window,dilated_causal --flex flash \
  --shapes 8x16x2048x128,4x16x4096x64,2x16x8192x128 --out /tmp/res/table.json > /tmp/res/table.txt 2>&1
echo "rc=$? after ${SECONDS}s" >> /tmp/res/table.txt
kill $saver; save
