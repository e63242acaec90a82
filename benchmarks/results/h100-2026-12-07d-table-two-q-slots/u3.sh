# session 46, call 3: did the two-slot commit slow key padding (one slot, same SASS)? main and an A/A copy beside 206ec8f
save() { tar czf $OUT/res.tgz -C /tmp/res .; }
rm -rf /tmp/res; mkdir -p /tmp/res
git log --oneline -1 > /tmp/res/rev.txt
( while sleep 30; do save; done ) & saver=$!
timeout 400 python benchmarks/ab.py --base aa=.ab/aa --base before=.ab/before --reps 10 --seconds 0.3 \
  --case "key_padding 8x16x2048x128 BM128 BN128 w4 s2 gluon persistent" \
  --case "noop 8x16x2048x128 BM128 BN128 w4 s2 gluon persistent" \
  --out /tmp/res/ab4.json > /tmp/res/ab4.txt 2>&1; echo "ab rc=$?" >> /tmp/res/ab4.txt
kill $saver; save
