# On the GPU box: a full `kgen attention` run with a scripted stand-in model, then `kgen verify` of the
# best kernel at two shapes, then the GPU tests. Logs and run directories land in $OUT.
source scripts/device_env.sh || exit 1
python3 scripts/scripted_model.py --rounds 30 > /tmp/model_url &
sleep 3
url=$(head -1 /tmp/model_url)
time python3 -m cli attention --score-mod examples/specs/rel_pos.py --model fake-model --base-url "$url" \
  --budget 3m --samples 2 --runs-dir $OUT/runs 2>&1 | tee $OUT/loop.log | tail -40
best=$(ls $OUT/runs/*/best/kernel.py | head -1)
for shape in "--batch 4 --heads 16 --seq-len 4096 --head-dim 64" "--batch 2 --heads 16 --seq-len 8192 --head-dim 128"; do
  ( time python3 -m cli verify "$best" --score-mod examples/specs/rel_pos.py $shape ) 2>&1 | tee -a $OUT/verify.log | tail -14
done
timeout 200 python3 -m pytest -q tests/test_gpu_verifier.py -k "not implausible" 2>&1 | tail -15 | tee $OUT/gpu_tests.log
tar czf $OUT/runs.tgz -C $OUT runs && rm -rf $OUT/runs
