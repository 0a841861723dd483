#!/bin/sh
# The worker job of test_proxy_spire_jobs.py (spire mode): the direct shape with the job's own
# JWT-SVID, and the refusals a job sees without one. Each result line is
# "<label>:<status>"; a refusal's body comes first.
set -u
S=/run/flashpods/proxy.sock
svid() {  # the job's JWT-SVID for audience $1 from the SPIRE agent mounted into the job
    /flashpods/bin/spire-agent api fetch jwt -audience "$1" \
        -socketPath /run/spire/sockets/agent.sock -timeout 5s |
        awk '/^token\(/ { getline; gsub(/[ \t]/, ""); print; exit }'
}
PROXY_SVID=$(svid flashpods-proxy)
TOKEN_SVID=$(svid flashpods-token)
if [ -z "$PROXY_SVID" ] || [ -z "$TOKEN_SVID" ]; then echo "no SVID from the agent"; exit 3; fi
c() { curl -sS --cacert "$FLASHPODS_PROXY_CA" --unix-socket $S -H "Authorization: token $GITHUB_TOKEN" "$@"; }
# TLS straight away (curl --unix-socket): the SVID in the request's Proxy-Authorization.
c -H "Proxy-Authorization: Bearer $PROXY_SVID" https://api.github.com/direct -o /dev/null -w 'direct:%{http_code}\n'
c https://api.github.com/nosvid -w '\nnosvid:%{http_code}\n'
c -H "Proxy-Authorization: Bearer eyJhbGciOiJFUzI1NiJ9.e30.c2ln" https://api.github.com/garbage -w '\ngarbage:%{http_code}\n'
# (garbage: JWT-shaped, signed by no key of the bundle: refused at its missing kid)
# The SVID flashpods-init shows the token service: not good at the proxy.
c -H "Proxy-Authorization: Bearer $TOKEN_SVID" https://api.github.com/tokenaud -w '\ntokenaud:%{http_code}\n'
# ... and the proxy's SVID is not good at the token service.
python3 - "$PROXY_SVID" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect("/run/flashpods/token.sock")
s.sendall(("POST /v1/exchange HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n"
           f"Authorization: Bearer {sys.argv[1]}\r\nConnection: close\r\n\r\n").encode())
answer = b""
while chunk := s.recv(4096):
    answer += chunk
print(answer.split(b"\r\n\r\n", 1)[1].decode().strip())
print("exchange-with-proxy-svid:" + answer.split(b" ")[1].decode())
PY
# Through the relay (HTTPS_PROXY): flashpods-init's relay adds the job's SVID itself.
curl -sS -H "Authorization: token $GITHUB_TOKEN" https://api.github.com/relay -o /dev/null -w 'relay:%{http_code}\n'
echo "all done"
