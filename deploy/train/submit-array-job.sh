#!/usr/bin/env bash
# Submit the training fan-out as an AWS Batch array job of N = 4 children.
# Child I gets AWS_BATCH_JOB_ARRAY_INDEX=I (AWS Batch User Guide, "Array jobs",
# https://docs.aws.amazon.com/batch/latest/userguide/array_jobs.html), which
# `selfheal train --shards 4` reads; arrayProperties.size must equal --shards.
# Register the definition once:
#   aws batch register-job-definition --cli-input-json file://deploy/train/batch-job-definition.json
# The definition writes /tmp/shard.json; copy it out (e.g. to S3) in a wrapper
# of your image, then fold the shards: selfheal fleet merge --out policy.json shard-*.json
set -euo pipefail
queue=${1:?usage: submit-array-job.sh JOB_QUEUE}
aws batch submit-job \
    --job-name selfheal-train \
    --job-queue "$queue" \
    --job-definition selfheal-train \
    --array-properties size=4
