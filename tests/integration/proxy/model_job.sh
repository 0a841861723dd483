#!/bin/sh
# The sub-agent job of test_proxy_usage.py: Messages API calls through the relay, as
# Claude Code makes them (x-api-key, JSON), plain and streamed, until the budget says no.
# At its budget the reaper stops the job (TERM, then KILL after kill_grace_s): asked to
# stop, it makes one more call and shows what the model endpoint answered.
set -u
call() {
	curl -sS https://api.anthropic.com/v1/messages -H "x-api-key: $ANTHROPIC_API_KEY" \
		-H 'content-type: application/json' -H 'anthropic-version: 2023-06-01' \
		-d "{\"model\":\"m\",\"max_tokens\":64,\"stream\":$2,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}" \
		-o "/tmp/answer$1" -w "call$1:%{http_code}\n"
	echo "answer$1:$(head -c 600 "/tmp/answer$1" | tr '\n' ' ')"
}
stopped() {
	echo "asked-to-stop"
	call 5 false
	exit 143
}
trap stopped TERM
call 1 false
call 2 true
grep -c '^event: message_delta' /tmp/answer2 | sed 's/^/stream-events:/'
call 3 false
call 4 true
echo "waiting-for-the-reaper"
sleep 300 &
wait
