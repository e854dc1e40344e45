#!/usr/bin/python3
"""The Kafka producer knows its fixed topics before the first event.

librdkafka fetches metadata at its first broker connection only for topics it
already knows; a topic first seen in a produce call waits for its once-a-second
topic scan, and so do the messages for it. The bridge names the events and
state topics (templates without <vm> or <type>) right after creating the
producer, so with no VM at all the connection's metadata request already
covers both (librdkafka's "metadata" debug log says so). A template with <vm>
names one topic per VM: it is left to the first message, while the fixed
state topic is still named ahead."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, kafka, util  # noqa: E402

TOPICS = [("qmp.events", 6, 3), ("qmp.state", 6, 3)]


def run(t, name, events_topic):
    d = os.path.join(t.workdir, name)
    os.makedirs(os.path.join(d, "vms"))
    mock = kafka.KafkaMock(d, brokers=3, topics=TOPICS).start()
    t.add_log(name + " kafka_mock", mock.log)
    yaml = ('  - { type: kafka, brokers: "%s", events_topic: "%s",'
            ' properties: { debug: "metadata,topic" } }\n'
            'discovery: { directory: "%s", suffix: ".qmp" }\n'
            % (mock.bootstrap, events_topic, os.path.join(d, "vms")))
    br = bridge.Bridge(d, [], bridge_id="ahead", log_level="debug", stdout_path=False,
                       extra_yaml=yaml).start()
    t.add_log(name + " bridge", br.log)
    return mock, br


with check.Test("kafka_topics_ahead") as t:
    t.section("fixed topics: metadata at the first connection, no VM yet")
    mock, br = run(t, "fixed", "qmp.events")
    br.wait_log("qmp.events with 6 partitions", timeout=20 * util.TIMEOUT_SCALE)
    br.wait_log("qmp.state with 6 partitions", timeout=20 * util.TIMEOUT_SCALE)
    t.ok("with no VM, librdkafka has the metadata of qmp.events and qmp.state")
    t.expect(br.stop() == 0, "the bridge exits 0")
    mock.stop()

    t.section("a per-VM events topic is not named ahead, the state topic is")
    mock, br = run(t, "per-vm", "qmp.events.<vm>")
    br.wait_log("qmp.state with 6 partitions", timeout=20 * util.TIMEOUT_SCALE)
    t.ok("the state topic is named ahead")
    named = [l for l in br.log_lines("New local topic") if "qmp.state" not in l]
    t.expect(not named, "no other topic is named before a VM publishes", named)
    t.expect(br.stop() == 0, "the bridge exits 0")
    mock.stop()
