# session 46, call 5: two Q slots for block-map kernels (q2m), the next tile's schedule entry read a tile ahead (pinfo),
# and both, beside main and an A/A copy of main
save() { tar czf $OUT/res.tgz -C /tmp/res .; }
rm -rf /tmp/res; mkdir -p /tmp/res
git log --oneline -1 > /tmp/res/rev.txt
( while sleep 30; do save; done ) & saver=$!
timeout 400 python benchmarks/ab.py --base aa=.ab/aa --base q2m=.ab/q2m --base pinfo=.ab/pinfo --base both=.ab/both \
  --reps 10 --seconds 0.3 \
  --case "key_padding 8x16x2048x128 BM128 BN128 w4 s2 gluon persistent" \
  --case "key_padding 2x16x8192x128 BM128 BN128 w4 s2 gluon persistent" \
  --case "causal 2x16x8192x128 BM128 BN128 w4 s2 gluon persistent" \
  --case "noop 8x16x2048x128 BM128 BN128 w4 s2 gluon persistent" \
  --out /tmp/res/ab5.json > /tmp/res/ab5.txt 2>&1; echo "ab rc=$?" >> /tmp/res/ab5.txt
kill $saver; save
