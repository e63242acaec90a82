# session 52: how long the Gluon kernel's consumers wait for Q, K and V to land (benchmarks/wait_times.py), on key
# padding and plain attention at D128, all waits timed and then K's and V's alone. `bash u2.sh [LIMIT]`
LIMIT=${1:-290}
save() { tar czf $OUT/res2.tgz -C /tmp/res2 .; }
rm -rf /tmp/res2; mkdir -p /tmp/res2
( while sleep 30; do save; done ) & saver=$!
CFG="BM128 BN128 w4 s2 gluon persistent"
run() {  # spec shape kinds name
  timeout $(( LIMIT - SECONDS > 10 ? 90 : 1 )) python benchmarks/wait_times.py examples/specs/$1.py "$CFG" --shape $2 \
    --kinds $3 --out /tmp/res2/waits-$1-$2-$4.json >> /tmp/res2/waits.txt 2>&1
  echo "rc=$? after ${SECONDS}s ($1 $2 $4)" >> /tmp/res2/waits.txt
}
ALL=q,first_k,k,v,store
for shape in 2x16x8192x128 8x16x2048x128; do
  run key_padding $shape $ALL all
  run noop $shape $ALL all
done
run key_padding 2x16x8192x128 k k
run key_padding 2x16x8192x128 v v
run key_padding 2x16x8192x128 q,first_k,store tile
kill $saver; save
