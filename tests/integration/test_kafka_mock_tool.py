#!/usr/bin/python3
"""test_kafka_mock_tool.py - the kafka_mock tool and the qbtest.kafka helpers.

Starts a 3-broker mock with a 3-partition topic, produces 100 keyed messages
with kcat -P and reads them back with kcat -C; then takes the leader of
partition 0 down while a kcat producer writes to that partition, checks that
the broker refuses connections, that nothing of it is consumed while down
while another partition keeps working, and that all of it arrives after
"up". Also: error answers, topic auto-creation, exit 0 on quit and SIGTERM.

Needs QB_BUILD_DIR (ctest sets it) pointing at a build with tests/kafka_mock.
"""
import json
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import check, kafka, procs  # noqa: E402

TOPIC = "events"
KEYS = ["vm%d" % i for i in range(10)]


def refuses(host, port):
    try:
        with socket.create_connection((host, port), timeout=5):
            return False
    except ConnectionRefusedError:
        return True


def check_contiguous(t, records, what):
    """Offsets of each partition are 0..n-1, each once."""
    by_part = {}
    for r in records:
        by_part.setdefault(r.partition, []).append(r.offset)
    for part, offs in sorted(by_part.items()):
        t.expect(sorted(offs) == list(range(len(offs))),
                 "%s: partition %d offsets are 0..%d" % (what, part, len(offs) - 1), sorted(offs))


with check.Test("kafka_mock_tool") as t:
    started = time.monotonic()
    mock = kafka.KafkaMock(t.workdir, brokers=3, topics=[(TOPIC, 3, 3)])
    t.add_log("kafka_mock", mock.log)
    mock.start()
    t.expect(len(mock.bootstrap.split(",")) == 3, "BOOTSTRAP lists 3 brokers", mock.bootstrap)

    t.section("command answers")
    for bad in ("down 0", "down 4", "up x", "nonsense", "leader %s 0" % TOPIC, "topic t 1 4",
                "topic t 0 1"):
        answer = mock.command(bad, check=False)
        t.expect(answer.startswith("ERR "), "%r is refused" % bad, answer)

    t.section("produce 100, consume 100")
    consumer = kafka.KcatConsumer(mock.bootstrap, TOPIC, t.workdir, name="consumer").start()
    t.add_log("kcat consumer", consumer.log)
    first = [(KEYS[n % len(KEYS)], json.dumps({"phase": 1, "n": n, "key": KEYS[n % len(KEYS)]}))
             for n in range(100)]
    produce_log = os.path.join(t.workdir, "produce1.log")
    t.add_log("kcat producer 1", produce_log)
    kafka.produce(mock.bootstrap, TOPIC, first, t.workdir, headers={"ce_type": "test"},
                  name="produce1")
    recs = consumer.wait_count(100)
    t.expect(len(recs) == 100, "exactly 100 records consumed", len(recs))
    ns = sorted(r.json()["n"] for r in recs)
    t.expect(ns == list(range(100)), "each of messages 0..99 consumed once")
    t.expect(all(r.key == r.json()["key"] for r in recs), "record keys match the produced keys")
    t.expect(all(r.headers == {"ce_type": "test"} for r in recs), "headers come back as a dict",
             recs[0].headers)
    t.expect({r.partition for r in recs} == {0, 1, 2}, "10 keys spread over all 3 partitions",
             sorted({r.partition for r in recs}))
    check_contiguous(t, recs, "phase 1")

    t.section("leader of partition 0 down")
    leader = kafka.partition_leader(mock.bootstrap, TOPIC, 0)
    other = leader % 3 + 1
    # Make partition 1 certainly live on another broker, so it must keep working.
    mock.command("leader %s 1 %d" % (TOPIC, other))
    t.expect(kafka.partition_leader(mock.bootstrap, TOPIC, 1) == other,
             "'leader' moved partition 1 to broker %d" % other)
    mock.command("down %d" % leader)
    host, port = mock.broker_address(leader)
    t.expect(refuses(host, port), "broker %d (%s:%d) refuses connections while down"
             % (leader, host, port))

    # -E: connection failures to the down broker must not end kcat.
    produce_log = os.path.join(t.workdir, "produce2.log")
    t.add_log("kcat producer 2", produce_log)
    producer = procs.spawn(kafka.produce_argv(mock.bootstrap, TOPIC, partition=0, extra=["-E"]),
                           "kcat-produce2", stdin=subprocess.PIPE, stdout=produce_log,
                           stderr=produce_log)
    second = [json.dumps({"phase": 2, "n": n}) for n in range(30)]
    producer.stdin.write(("\n".join(second) + "\n").encode())
    producer.stdin.flush()
    kafka.produce(mock.bootstrap, TOPIC, [json.dumps({"phase": "side", "n": 0})], t.workdir,
                  partition=1, name="produce-side")
    consumer.wait_count(1, predicate=lambda r: r.json()["phase"] == "side")
    t.ok("partition 1 (broker %d) still produces and consumes while broker %d is down"
         % (other, leader))
    time.sleep(3)  # give a wrongly-reachable broker every chance to deliver
    consumer.read()
    during = [r for r in consumer.records if r.json()["phase"] == 2]
    t.expect(not during, "nothing produced to partition 0 is consumed while its leader is down",
             during[:3])
    t.expect(producer.poll() is None, "the producer is still waiting to deliver")

    t.section("leader up again")
    mock.command("up %d" % leader)
    t.expect(not refuses(host, port), "broker %d accepts connections after up" % leader)
    producer.stdin.close()
    try:
        producer.wait(60)
    except subprocess.TimeoutExpired:
        pass
    rc = procs.stop(producer)
    t.expect(rc == 0, "the producer delivered everything and exited 0", rc)
    recs = consumer.wait_count(30, predicate=lambda r: r.json()["phase"] == 2)
    t.expect(sorted(r.json()["n"] for r in recs) == list(range(30)),
             "all 30 messages produced during the outage consumed once, after up")
    t.expect({r.partition for r in recs} == {0}, "all of them on partition 0")
    check_contiguous(t, consumer.records, "after the outage")
    consumer.stop()

    t.section("auto-created topic")
    kafka.produce(mock.bootstrap, "auto-made", ['{"auto": true}'], t.workdir, key="k1",
                  name="produce-auto")
    md = kafka.metadata(mock.bootstrap, "auto-made")
    parts = [p for tp in md["topics"] if tp["topic"] == "auto-made" for p in tp["partitions"]]
    t.expect(len(parts) == 4, "the mock auto-created auto-made with its default 4 partitions",
             len(parts))
    auto = kafka.KcatConsumer(mock.bootstrap, "auto-made", t.workdir, name="auto").start()
    recs = auto.wait_count(1)
    t.expect(recs[0].key == "k1" and recs[0].json() == {"auto": True},
             "the message to the auto-created topic is consumed", recs)
    auto.stop()

    t.section("exit")
    t.expect(mock.command("quit") == "OK", "quit is answered OK")
    rc = mock.stop()
    t.expect(rc == 0, "kafka_mock exits 0 after quit", rc)
    second_mock = kafka.KafkaMock(t.workdir, brokers=1, name="kafka_mock2").start()
    t.expect(len(second_mock.bootstrap.split(",")) == 1, "--brokers 1 gives one broker")
    rc = procs.stop(second_mock.proc)
    second_mock.proc.stdout.close()
    second_mock.proc = None
    t.expect(rc == 0, "kafka_mock exits 0 on SIGTERM", rc)
    for path in (mock.log, second_mock.log):
        with open(path) as f:
            text = f.read()
        t.expect("Sanitizer" not in text, "no sanitizer report in %s" % os.path.basename(path))
    t.ok("took %.1fs" % (time.monotonic() - started))
