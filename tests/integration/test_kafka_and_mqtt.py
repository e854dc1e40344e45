#!/usr/bin/python3
"""Kafka and MQTT at once: a VM's events reach both, complete and in the same order.

One bridge with an MQTT transport (mosquitto) and a Kafka transport (the mock
cluster process), three scripted VMs streaming 300 events each. kcat and
mosquitto_sub consume independently. Checked per VM: the same envelope ids, in
the same order, on both buses, sequence contiguous, every envelope schema-valid."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, kafka, mqtt, peers, procs  # noqa: E402

VMS = ["vm1", "vm2", "vm3"]
COUNT = 300

with check.Test("kafka_and_mqtt") as t:
    d = t.workdir
    broker = mqtt.Broker(d).start()
    t.add_log("mosquitto", broker.log)
    sub = mqtt.Subscriber(broker).start()
    mock = kafka.KafkaMock(d, topics=[("qmp.events", 3, 3), ("qmp.state", 3, 3)]).start()
    t.add_log("kafka_mock", mock.log)
    kc = kafka.KcatConsumer(mock.bootstrap, "qmp.events", d).start()
    socks = peers.start_event_peers(d, VMS, COUNT, interval=0.005)
    br = bridge.Bridge(d, socks, broker=broker, stdout_path=False)
    br.yaml = br.yaml.replace("transports:\n", 'transports:\n  - { type: kafka, brokers: "%s" }\n'
                              % mock.bootstrap)
    with open(br.conf, "w") as f:
        f.write(br.yaml)
    br.start()
    t.add_log("bridge", br.log)

    def mqtt_ids(vm):
        sub.poll()
        return [m.json["id"] for m in sub.messages if m.json is not None and "/event/" in m.topic
                and m.json["subject"] == vm]

    def kafka_ids(vm):
        out = []
        kc.read()  # appends the new records to kc.records
        for r in kc.records:
            env = kafka.structured_envelope(r)
            if env["subject"] == vm:
                out.append((r.partition, r.offset, env["id"], int(env["sequence"])))
        return [i for _, _, i, _ in sorted(out)]

    # Each VM: connected, snapshot, COUNT events (STOP/RESUME included).
    want = COUNT + 2
    for vm in VMS:
        procs.wait_until(lambda: len(mqtt_ids(vm)) >= want and len(kafka_ids(vm)) >= want, 90,
                         "%d events of %s on both buses" % (want, vm))
    for vm in VMS:
        m, k = mqtt_ids(vm), kafka_ids(vm)
        t.expect(m == k, "%s: the same %d ids in the same order on MQTT and Kafka" % (vm, len(m)),
                 [(a, b) for a, b in zip(m, k) if a != b][:3])
        seqs = [int(i.split("-")[1]) for i in m]
        t.expect(seqs == list(range(1, len(seqs) + 1)), "%s: sequence contiguous 1..%d" % (vm, len(seqs)))
    rc = br.stop()
    t.expect(rc == 0, "bridge exits 0", rc)
