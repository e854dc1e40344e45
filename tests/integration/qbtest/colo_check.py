"""colo_check.py - the reason a qmp.vm.stopped must carry during a migration or COLO.

QEMU 7.2 sends MIGRATION before the STOP it explains: status active before the
source's switchover (run state finish-migrate), colo before every COLO
checkpoint and the failover (run state colo); after the failover's STOP come
MIGRATION completed and COLO_EXIT. The bridge publishes those statuses as
qmp.event (name MIGRATION), so a consumer can check a STOP's reason against
them in the VM's own order.
"""

IMPLIED = {"active": "finish-migrate", "colo": "colo"}


def stops_with_implied_reason(envelopes):
    """envelopes: one VM's envelopes (dicts) in sequence order. Returns
    [(qmp.vm.stopped envelope, the reason the last MIGRATION status before it
    implies, or None)]."""
    status = None
    out = []
    for e in envelopes:
        if e["type"] == "qmp.event" and e["data"].get("name") == "MIGRATION":
            status = (e["data"].get("data") or {}).get("status")
        elif e["type"] == "qmp.colo.exit":
            status = None
        elif e["type"] == "qmp.vm.stopped":
            out.append((e, IMPLIED.get(status)))
    return out


def check_stop_reasons(t, name, envelopes):
    """Expects on t (a check.Test) that no STOP of VM name is 'unknown' and that
    each carries the reason its MIGRATION status implies. Returns the reasons."""
    pairs = stops_with_implied_reason(envelopes)
    reasons = [e["data"]["reason"] for e, _ in pairs]
    t.expect("unknown" not in reasons, "%s: no qmp.vm.stopped with reason unknown" % name, reasons)
    wrong = ["seq %s: %s, implied %s" % (e["sequence"], e["data"]["reason"], implied)
             for e, implied in pairs if implied is not None and e["data"]["reason"] != implied]
    t.expect(not wrong, "%s: every STOP has the reason its MIGRATION status implies (%s)"
             % (name, ", ".join(reasons)), "\n".join(wrong))
    return reasons
