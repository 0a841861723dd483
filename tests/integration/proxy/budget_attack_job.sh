#!/bin/sh
# The sub-agent job of test_proxy_usage.py's attack: it tries to raise its own budget.
# BUDGET_DIR (the host's budget directory) is set before this script by the test.
set -u
call() {
	curl -sS https://api.anthropic.com/v1/messages -H "x-api-key: $ANTHROPIC_API_KEY" \
		-H 'content-type: application/json' -H 'anthropic-version: 2023-06-01' \
		-d "{\"model\":\"m\",\"max_tokens\":1000000,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}" \
		-o "/tmp/answer$1" -w "call$1:%{http_code}\n"
	echo "answer$1:$(head -c 600 "/tmp/answer$1" | tr '\n' ' ')"
}
# The host's directory is not in the container: neither readable nor writable here.
ls "$BUDGET_DIR" >/dev/null 2>&1 && echo "budget-dir:visible" || echo "budget-dir:absent"
if (printf '{"job_id":"%s","budget_tokens":1000000}' "$FLASHPODS_JOB_ID" \
	>"$BUDGET_DIR/$FLASHPODS_JOB_ID.json") 2>/dev/null; then
	echo "budget-write:done"
else
	echo "budget-write:refused"
fi
until [ -e /workspace/go1 ]; do sleep 0.1; done
call 1 # the test has put a forged link in place of the job's file
until [ -e /workspace/go2 ]; do sleep 0.1; done
call 2 # the real file again; max_tokens 1000000 asked
