# session 46, call 2: the whole benchmark's N8192 D128 and N4096 D64 rows on main
save() { tar czf $OUT/res.tgz -C /tmp/res .; }
rm -rf /tmp/res; mkdir -p /tmp/res
git log --oneline -1 > /tmp/res/rev.txt
( while sleep 30; do save; done ) & saver=$!
timeout $((585 - SECONDS)) python benchmarks/bench.py --flex default,max-autotune,flash --shapes 2x16x8192x128,4x16x4096x64 \
  --out /tmp/res/table-b.json > /tmp/res/table-b.txt 2>&1; echo "rc=$?" >> /tmp/res/table-b.txt
kill $saver; save
