"""check.py - test scaffolding: say what was checked, fail with the logs.

    with Test("enospc_mqtt") as t:
        ...
        t.ok("subscriber saw qmp.block.io_error", detail)
        t.expect(cond, "what must hold", detail)

On any exception the test prints the failing step and the tails of every log
the test registered (bridge, QEMU, mosquitto, subscriber), then exits 1.
"""
import sys
import traceback

from . import bridge
from . import procs
from . import util


class CheckFailed(AssertionError):
    pass


class Test:
    def __init__(self, name):
        self.name = name
        self.workdir = util.make_tmpdir("qbt-%s-" % name.replace("_", "")[:10])
        self.logs = []  # (label, path)
        self.step = "setup"
        self.checked = 0

    def add_log(self, label, path):
        self.logs.append((label, path))

    def ok(self, what, detail=None):
        self.checked += 1
        print("  ok  %s%s" % (what, (": " + str(detail)) if detail is not None else ""))
        sys.stdout.flush()

    def expect(self, cond, what, detail=None):
        if not cond:
            raise CheckFailed("%s%s" % (what, ("\n    got: " + str(detail)) if detail is not None else ""))
        self.ok(what)

    def section(self, step):
        self.step = step
        print("-- %s" % step)
        sys.stdout.flush()

    def __enter__(self):
        print("== %s (workdir %s)" % (self.name, self.workdir))
        return self

    def __exit__(self, etype, exc, tb):
        if etype is None:
            try:
                self.step = "teardown: memcheck verdict on the bridge"
                bridge.finish_all()  # memcheck verdicts (QB_VALGRIND) before the rest dies
            except bridge.ValgrindError as e:
                return self.__exit__(type(e), e, e.__traceback__)
            procs.cleanup_all()
            print("PASS %s: %d checks" % (self.name, self.checked))
            sys.stdout.flush()
            sys.exit(0)
        if etype is SystemExit:
            return False
        print("\nFAIL %s during '%s': %s: %s" % (self.name, self.step, etype.__name__, exc))
        traceback.print_exception(etype, exc, tb, limit=6, file=sys.stdout)
        try:
            bridge.finish_all()
        except bridge.ValgrindError as e:
            print("\nFAIL %s also: %s" % (self.name, e))
        procs.cleanup_all()
        for label, path in self.logs:
            print("\n----- %s (%s), last lines -----\n%s" % (label, path, util.tail(path, 60)))
        sys.stdout.flush()
        sys.exit(1)


def seq_int(msg):
    return int(msg.json["sequence"])


def summarize(msgs, limit=40):
    """One line per message: topic, type and a short data, for failure output."""
    out = []
    for m in msgs[-limit:]:
        d = m.json.get("data") if isinstance(m.json, dict) else m.raw[:80]
        out.append("  #%d %s%s seq=%s %s" % (m.index, m.topic, " R" if m.retained else "",
                                            m.json.get("sequence") if isinstance(m.json, dict) else "-",
                                            str(d)[:200]))
    return "\n".join(out)


def vm_envelopes(sub, bridge_id, vm):
    """The envelopes of one VM as the subscriber received them, in arrival
    order: topics qmp/<bridge>/<vm>/event/<type> and qmp/<bridge>/<vm>/state.
    An envelope seen twice (on both topics, or a QoS 1 redelivery) is kept once.
    Checks on the way that an event topic ends in the envelope's type."""
    sub.poll()
    prefix = "qmp/%s/%s/" % (bridge_id, vm)
    seen, out = set(), []
    for m in sub.messages:
        if not m.topic.startswith(prefix) or m.json is None:
            continue
        rest = m.topic[len(prefix):]
        if rest.startswith("event/") and rest[len("event/"):] != m.type:
            raise CheckFailed("topic %s carries an envelope of type %s" % (m.topic, m.type))
        if m.json["subject"] != vm:
            raise CheckFailed("topic %s carries subject %s" % (m.topic, m.json["subject"]))
        if m.json["id"] in seen:
            continue
        seen.add(m.json["id"])
        out.append(m)
    return out


def on_state_topic(m):
    return m.topic.endswith("/state")


def assert_increasing(msgs, what, consecutive=False):
    """Event-topic envelopes: sequence strictly increasing in arrival order
    (and without gaps when consecutive). A state-topic envelope re-publishes
    the state an event changed, under that event's sequence: it may repeat
    the last sequence but never go back."""
    prev = None
    for m in msgs:
        s = seq_int(m)
        if on_state_topic(m):
            if prev is not None and s < prev:
                raise CheckFailed("%s: state sequence %d went back after %d\n%s" % (
                    what, s, prev, summarize(msgs)))
            continue
        if prev is not None and (s <= prev or (consecutive and s != prev + 1)):
            raise CheckFailed("%s: sequence %d after %d (%s)\n%s" % (
                what, s, prev, "gap" if s > prev else "not increasing", summarize(msgs)))
        prev = s


def is_snapshot(env):
    """True for a qmp.vm.state envelope (a dict, or an mqtt.Message) of a live session: a
    snapshot or an update, not the state published when a session ended (connected: false)."""
    env = env if isinstance(env, dict) else env.json
    return env["type"] == "qmp.vm.state" and env["data"].get("connected") is not False


def first_index(msgs, pred, start=0):
    for i in range(start, len(msgs)):
        if pred(msgs[i]):
            return i
    return -1


def disk(state_data, device):
    """The disks[] entry of a qmp.vm.state data for device, or {}."""
    for x in state_data.get("disks") or []:
        if x.get("device") == device:
            return x
    return {}


def no_retained_state(broker, bridge_id, vm):
    """True when a fresh subscriber gets no retained message on vm's state topic."""
    from . import mqtt
    try:
        mqtt.Subscriber(broker, name="probe").fetch_retained(
            "qmp/%s/%s/state" % (bridge_id, vm), timeout=2)
    except TimeoutError:
        return True
    return False


def wait_retained_state(sub, bridge_id, vm, pred, what, timeout=20.0):
    """Polls the retained qmp/<bridge>/<vm>/state with fresh subscribers until
    pred(data) holds; returns that message. Fails showing the last one seen."""
    last = {}

    def ok():
        try:
            m = sub.fetch_retained("qmp/%s/%s/state" % (bridge_id, vm), timeout=3)
        except TimeoutError:
            return None
        last["m"] = m
        return m if m.retained and m.json and pred(m.json["data"]) else None
    try:
        return procs.wait_until(ok, timeout, what, interval=0.3)
    except TimeoutError:
        raise CheckFailed("retained state of %s never showed %s; last: %r" % (vm, what, last.get("m")))
