#!/usr/bin/env bash
# Domain scaling (see README.md): the same 300,000 synthetic rows spread over K = 2 ... 32 domains.
set -euo pipefail
R=${R:-logs/domain_scaling/multiruns}
common=(data.source.num_domains=2,4,8,16,32 data.source.domain_shares=null "seed=${SEEDS:-0,1,2}" task_name=domain_scaling)
mdrec-train -m stage=adapt input=embedded adapter=iak "${common[@]}" hydra.sweep.dir="$R/iak"
# STAR at its defaults when this was measured (Scenario-Wise-Rec's MovieLens sizes; today's default is [256, 128])
mdrec-train -m model=star "model.net.layer_sizes=[128,64,32]" model.net.dropout=0.0 model.net.batch_norm=false \
    "${common[@]}" hydra.sweep.dir="$R/star"
