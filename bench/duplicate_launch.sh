#!/usr/bin/env bash
# Two `medfake synth` processes on the same rank and output, launched 6 s apart (a requeue
# while the old task lives), then a single run: prints both exit codes and whether every shard,
# manifest and dataset.json is byte-identical. Needs a micro model, a phantom world and an ONNX
# export under /tmp/fs17b (what `python bench/farm_scale.py --workdir /tmp/fs17b` leaves).
set -u
export TQDM_DISABLE=1 PYTHONWARNINGS=ignore OMP_NUM_THREADS=1 MEDFAKE_CACHE=/tmp/fs17b/cache
W=${WORK:-/tmp/dup17}; rm -rf "$W/dup" "$W/single"; mkdir -p "$W"
M="${PYTHON:-python} -m medfake.pipelines.cli synth --model /tmp/fs17b/micro --real /tmp/fs17b/world/hospital --per-class 1500 --steps 1 --samples-per-shard 128 --batch-size 32 --threads 1 --backend onnx"
$M --out $W/dup > $W/a.log 2>&1 & A=$!
sleep 6
$M --out $W/dup > $W/b.log 2>&1 & B=$!
wait $A; echo "A rc=$?"; wait $B; echo "B rc=$?"
$M --out $W/single > $W/s.log 2>&1; echo "single rc=$?"
cd "$W" && for f in single/train-*.tar; do cmp -s $f dup/$(basename $f) || echo "DIFF $f"; done
ls single/*.tar | wc -l; ls dup/*.tar | wc -l; ls -a dup | grep tmp | wc -l
cmp single/dataset.json dup/dataset.json && echo dataset.json identical
for f in single/train-*.json; do cmp -s $f dup/$(basename $f) || echo "MDIFF $f"; done
echo "live skips: $(grep -c 'a live process is writing' a.log b.log | tr '\n' ' ')"
echo "identical publishes accepted: $(grep -c 'published meanwhile' a.log b.log | tr '\n' ' ')"
