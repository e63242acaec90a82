# On the GPU box: a full `kgen attention` run with a scripted stand-in model (run directory in $OUT/runs.tgz).
source scripts/device_env.sh || exit 1
python3 scripts/scripted_model.py --rounds 30 > /tmp/model_url 2>/tmp/model.log &
model=$!
trap 'kill $model 2>/dev/null' EXIT  # a server left running would hold the device call open
sleep 3
url=$(head -1 /tmp/model_url)
time python3 -m cli attention --score-mod examples/specs/rel_pos.py --model fake-model --base-url "$url" \
  --budget ${BUDGET:-3m} --samples 2 --runs-dir $OUT/runs 2>&1 | tee $OUT/loop.log | tail -40
tar czf $OUT/runs.tgz -C $OUT runs && rm -rf $OUT/runs
