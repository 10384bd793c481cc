#!/usr/bin/env bash
# Two `medfake synth` processes on the same rank and output, launched 6 s apart (a requeue
# while the old task lives), then a single run: prints both exit codes and whether every shard,
# manifest and dataset.json is byte-identical. Needs a micro model, a phantom world and an ONNX
# export under /tmp/fs17b (what `python bench/farm_scale.py --workdir /tmp/fs17b` leaves).
set -u
export TQDM_DISABLE=1 PYTHONWARNINGS=ignore OMP_NUM_THREADS=1 MEDFAKE_CACHE=/tmp/fs17b/cache
M="/work/main/.venv/bin/python -m medfake.pipelines.cli synth --model /tmp/fs17b/micro --real /tmp/fs17b/world/hospital --per-class 1500 --steps 1 --samples-per-shard 128 --batch-size 32 --threads 1 --backend onnx"
$M --out /tmp/dup17/dup > /tmp/dup17/a.log 2>&1 & A=$!
sleep 6
$M --out /tmp/dup17/dup > /tmp/dup17/b.log 2>&1 & B=$!
wait $A; echo "A rc=$?"; wait $B; echo "B rc=$?"
$M --out /tmp/dup17/single > /tmp/dup17/s.log 2>&1; echo "single rc=$?"
cd /tmp/dup17 && for f in single/train-*.tar; do cmp -s $f dup/$(basename $f) || echo "DIFF $f"; done
ls single/*.tar | wc -l; ls dup/*.tar | wc -l; ls -a dup | grep tmp | wc -l
cmp single/dataset.json dup/dataset.json && echo dataset.json identical
for f in single/train-*.json; do cmp -s $f dup/$(basename $f) || echo "MDIFF $f"; done
echo "live skips: $(grep -c 'a live process is writing' a.log b.log | tr '\n' ' ')"
echo "identical publishes accepted: $(grep -c 'published meanwhile' a.log b.log | tr '\n' ' ')"
