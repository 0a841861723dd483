#!/bin/sh
# The relay job of test_proxy_relay.py: clients that only know HTTPS_PROXY (curl,
# git) reach the proxy through flashpods-init's relay on 127.0.0.1.
set -u
env | grep -E '^(HTTPS_PROXY|SSL_CERT_FILE|GIT_SSL_CAINFO|NODE_EXTRA_CA_CERTS)=' | sed 's/=.*//' | sort
curl -sS -H "Authorization: token $GITHUB_TOKEN" https://api.github.com/relay -o /dev/null -w 'relay-curl:%{http_code}\n'
git ls-remote "https://x-access-token:$GITHUB_TOKEN@github.com/o/r.git" >/tmp/git.out 2>&1
echo "git-tried:$?"
# A host with no rule is tunnelled untouched: TLS end to end with the origin itself.
curl -sS -k -H "Authorization: token $GITHUB_TOKEN" https://203.0.113.10/tunnel -o /dev/null -w 'tunnel:%{http_code}\n'
echo "all done"
