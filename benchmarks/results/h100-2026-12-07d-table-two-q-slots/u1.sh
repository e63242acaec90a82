# session 46, call 1: the whole benchmark's N2048 D128 rows on main (two Q slots for the dense kernel)
save() { tar czf $OUT/res.tgz -C /tmp/res .; }
rm -rf /tmp/res; mkdir -p /tmp/res
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > /tmp/res/gpu.txt
git log --oneline -1 > /tmp/res/rev.txt
( while sleep 30; do save; done ) & saver=$!
timeout $((580 - SECONDS)) python benchmarks/bench.py --flex default,max-autotune,flash --shapes 8x16x2048x128 \
  --out /tmp/res/table-a.json > /tmp/res/table-a.txt 2>&1; echo "rc=$?" >> /tmp/res/table-a.txt
kill $saver; save
