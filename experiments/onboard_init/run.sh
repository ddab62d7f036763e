#!/usr/bin/env bash
# The initialisation study (experiments/onboard_init/README.md): per seed, a five-domain synthetic world whose new
# domain d4 is related to the sources d0-d3 by 0.9, 0.67, 0.42 and 0 (cosine of the click directions), an adapt run on
# d0-d3, then d4 onboarded with stage.init=identity|nearest|weighted from 1 % to 100 % of its training rows. Run from
# the repository root; $PY is the Python of mdrec's environment (default .venv/bin/python).
set -euo pipefail
PY=${PY:-.venv/bin/python}
R=${R:-logs/onboard_init}
for s in ${SEEDS:-0 1 2 3 4}; do
  data=$R/data_$s
  [ -f $data/partner/new/test.csv ] || $PY -m mdrec.data.partner $data/partner --rows 60000 --seed $s \
    --relatedness 0.9,0.5,0.2,0,0.9 --source-shares 0.25,0.25,0.25,0.25 --new-share 0.2 > /dev/null
  [ -f $R/adapt_$s/encoding.json ] || $PY -m mdrec.train stage=adapt input=embedded adapter=iak data=partner_source paths.data_dir=$data \
    trainer.max_epochs=5 seed=$s threads=1 hydra.run.dir=$R/adapt_$s > /dev/null 2>&1
  for f in 0.01 0.05 0.2 1.0; do
    for init in identity nearest weighted; do
      out=$R/onboard_${s}_${f}_$init
      [ -f $out/metrics.json ] || $PY -m mdrec.train stage=onboard stage.adapted=$R/adapt_$s data=partner \
        paths.data_dir=$data stage.init=$init "data.domain_fractions={d4: $f}" trainer.max_epochs=10 seed=$s \
        threads=1 hydra.run.dir=$out > /dev/null 2>&1
    done
  done
done
$PY experiments/onboard_init/table.py $R
