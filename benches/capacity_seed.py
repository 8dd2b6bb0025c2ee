"""Seed a local AWS API server (moto) with Glue job metrics for benches/capacity.sh.

    python capacity_seed.py ENDPOINT PIPELINES FROM_SECS TO_SECS
    python capacity_seed.py --probe ENDPOINT PIPELINES FROM_SECS TO_SECS

For jobs job-0 .. job-(PIPELINES-1), one datapoint per 60 s period in
[FROM_SECS, TO_SECS) of each metric a Glue job publishes with --enable-metrics
and selfheal reads (namespace Glue, dimensions JobName, JobRunId=ALL, Type),
healthy values with seeded noise (random.Random(7)). PutMetricData in batches
of 1,000 datums (its limit). Prints the datapoints written and the seconds taken.

With --probe it writes nothing: it times one GetMetricData call of the queries
the daemon sends first (the first min(4 PIPELINES, 500): 500 is the API's limit
per call) over [FROM_SECS, TO_SECS), 60 s period, and prints the seconds and
the datapoints returned: the server's own cost of one call, apart from the daemon.
Needs boto3 (the moto virtualenv has it).
"""

import random
import sys
import time
from datetime import datetime, timezone

import boto3

# (metric, Type dimension, healthy mean, noise)
METRICS = [
    ("glue.driver.aggregate.numFailedTasks", "count", 0.0, 0.0),
    ("glue.ALL.jvm.heap.usage", "gauge", 0.45, 0.05),
    ("glue.ALL.system.cpuSystemLoad", "gauge", 0.5, 0.05),
    ("glue.driver.aggregate.recordsRead", "count", 60000.0, 3000.0),
]


def probe(cw, n, t0, t1):
    queries = []
    for i in range(n):
        for j, (name, kind, _, _) in enumerate(METRICS):
            dims = [
                {"Name": "JobName", "Value": f"job-{i}"},
                {"Name": "JobRunId", "Value": "ALL"},
                {"Name": "Type", "Value": kind},
            ]
            stat = "Sum" if kind == "count" else "Average"
            metric = {"Namespace": "Glue", "MetricName": name, "Dimensions": dims}
            queries.append({"Id": f"p{i}m{j}", "MetricStat": {"Metric": metric, "Period": 60, "Stat": stat}})
    start = time.monotonic()
    resp = cw.get_metric_data(
        MetricDataQueries=queries[:500],
        StartTime=datetime.fromtimestamp(t0, tz=timezone.utc),
        EndTime=datetime.fromtimestamp(t1, tz=timezone.utc),
        ScanBy="TimestampAscending",
    )
    points = sum(len(r["Values"]) for r in resp["MetricDataResults"])
    print(f"{time.monotonic() - start:.2f} {points}")


def main():
    probing = sys.argv[1] == "--probe"
    args = sys.argv[2:] if probing else sys.argv[1:]
    endpoint, n, t0, t1 = args[0], int(args[1]), int(args[2]), int(args[3])
    cw = boto3.client(
        "cloudwatch",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    if probing:
        probe(cw, n, t0, t1)
        return
    rng = random.Random(7)
    start = time.monotonic()
    batch, written = [], 0
    for t in range(t0 - t0 % 60, t1, 60):
        ts = datetime.fromtimestamp(t, tz=timezone.utc)
        for i in range(n):
            for name, kind, mean, noise in METRICS:
                batch.append(
                    {
                        "MetricName": name,
                        "Dimensions": [
                            {"Name": "JobName", "Value": f"job-{i}"},
                            {"Name": "JobRunId", "Value": "ALL"},
                            {"Name": "Type", "Value": kind},
                        ],
                        "Timestamp": ts,
                        "Value": max(0.0, rng.gauss(mean, noise)),
                    }
                )
                if len(batch) == 1000:
                    cw.put_metric_data(Namespace="Glue", MetricData=batch)
                    written += len(batch)
                    batch = []
    if batch:
        cw.put_metric_data(Namespace="Glue", MetricData=batch)
        written += len(batch)
    print(f"{written} {time.monotonic() - start:.1f}")


if __name__ == "__main__":
    main()
