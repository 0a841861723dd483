#!/usr/bin/env python3
"""Stand-in `spire-server` executable for registrar tests: records its arguments and
keeps entries in a JSON file, printing what the real CLI prints with `-output json`.

Environment: STANDIN_DIR (state + args log), STANDIN_FAIL (one of: create_exit,
create_status, delete_status, show_garbage) to script an error.
"""

import json
import os
import sys
import uuid
from pathlib import Path

state_dir = Path(os.environ["STANDIN_DIR"])
with open(state_dir / "argv.jsonl", "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\n")
state_file = state_dir / "entries.json"
entries = json.loads(state_file.read_text()) if state_file.exists() else []
fail = os.environ.get("STANDIN_FAIL", "")


def flags(args):
    out, i = {}, 0
    while i < len(args):
        name = args[i].lstrip("-")
        if name == "output" or i + 1 < len(args):
            out.setdefault(name, []).append(args[i + 1])
            i += 2
        else:
            out[name] = [True]
            i += 1
    return out


def spiffe(value):
    rest = value[len("spiffe://") :]
    td, _, path = rest.partition("/")
    return {"trust_domain": td, "path": "/" + path}


if sys.argv[1:2] != ["entry"]:
    print("unknown command", file=sys.stderr)
    sys.exit(1)
cmd, f = sys.argv[2], flags(sys.argv[3:])
if f.get("output") != ["json"] or "socketPath" not in f:
    print("stand-in expects -output json and -socketPath", file=sys.stderr)
    sys.exit(1)

if cmd == "create":
    if fail == "create_exit":
        print('Error: connection error: desc = "transport: Error while dialing"', file=sys.stderr)
        sys.exit(1)
    sel_type, _, sel_value = f["selector"][0].partition(":")
    entry = {
        "id": str(uuid.uuid4()),
        "spiffe_id": spiffe(f["spiffeID"][0]),
        "parent_id": spiffe(f["parentID"][0]),
        "selectors": [{"type": sel_type, "value": sel_value}],
        "jwt_svid_ttl": int(f["jwtSVIDTTL"][0]),
    }
    if fail == "create_status":
        status = {"code": 3, "message": "invalid selector"}
    elif any(
        e["spiffe_id"] == entry["spiffe_id"] and e["selectors"] == entry["selectors"]
        for e in entries
    ):
        status = {"code": 6, "message": "similar entry already exists"}
    else:
        status = {"code": 0, "message": "OK"}
        entries.append(entry)
    print(json.dumps({"results": [{"status": status, "entry": entry}]}))
elif cmd == "show":
    if fail == "show_garbage":
        print("Found 1 entry")
        sys.exit(0)
    found = entries
    if "selector" in f:
        t, _, v = f["selector"][0].partition(":")
        found = [e for e in found if {"type": t, "value": v} in e["selectors"]]
    if "parentID" in f:
        found = [e for e in found if e["parent_id"] == spiffe(f["parentID"][0])]
    print(json.dumps({"entries": found, "next_page_token": ""}))
elif cmd == "delete":
    eid = f["entryID"][0]
    if fail == "delete_status":
        status = {"code": 14, "message": "unavailable"}
    elif any(e["id"] == eid for e in entries):
        entries = [e for e in entries if e["id"] != eid]
        status = {"code": 0, "message": "OK"}
    else:
        status = {"code": 5, "message": "entry not found"}
    print(json.dumps({"results": [{"status": status, "id": eid}]}))
else:
    sys.exit(1)
state_file.write_text(json.dumps(entries))
