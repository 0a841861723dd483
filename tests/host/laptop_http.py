"""One HTTP request, made from inside a network namespace (run there with nsenter).

    laptop_http.py '{"method": "POST", "url": "http://10.0.0.1:8080/jobs",
                     "token": "...", "json": {...}}'

Prints {"status": N, "body": text, "error": ""}; status 0 with `error` when no HTTP
answer came at all (connection refused, reset, timeout).
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request


def main() -> None:
    spec = json.loads(sys.argv[1])
    data = None
    headers = {}
    if spec.get("token") is not None:
        headers["Authorization"] = f"Bearer {spec['token']}"
    if spec.get("json") is not None:
        data = json.dumps(spec["json"]).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(spec["url"], data=data, headers=headers, method=spec["method"])
    try:
        with urllib.request.urlopen(request, timeout=spec.get("timeout", 10)) as response:
            result = {"status": response.status, "body": response.read().decode(), "error": ""}
    except urllib.error.HTTPError as error:
        result = {"status": error.code, "body": error.read().decode(), "error": ""}
    except OSError as error:
        result = {"status": 0, "body": "", "error": str(error)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
