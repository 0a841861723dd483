#!/bin/sh
# The worker job of test_proxy_github.py (no scope): real git clone and push, curl and
# gh against stand-in GitHub through flashpods-init's relay (HTTPS_PROXY). The job only
# holds the placeholder in $GITHUB_TOKEN. Each result line is "<label>:<exit status>".
set -u
export GIT_TERMINAL_PROMPT=0 GH_NO_UPDATE_NOTIFIER=1 GH_PROMPT_DISABLED=1
mkdir -p "$HOME"
git config --global user.name job && git config --global user.email job@example.invalid
url="https://x-access-token:$GITHUB_TOKEN@github.com/o/r.git"
git clone -q "$url" /tmp/r; echo "clone:$?"
cd /tmp/r || exit 3
echo "from the job" > job.txt && git add job.txt && git commit -qm "job commit"
git push -q origin HEAD:main; echo "push-main:$?"
git push -q origin "HEAD:refs/heads/flashpods/$FLASHPODS_JOB_ID/x"; echo "push-branch:$?"
# The Bearer shape (http.extraHeader), as Actions-style tooling sends it.
git -c http.extraHeader="Authorization: Bearer $GITHUB_TOKEN" ls-remote https://github.com/o/r.git >/dev/null
echo "bearer:$?"
curl -sS -H "Authorization: token $GITHUB_TOKEN" https://api.github.com/user -o /dev/null -w 'curl:%{http_code}\n'
gh --version | head -1
gh api user > /tmp/gh.out 2>&1; echo "gh:$?"; cat /tmp/gh.out; echo
# A host with no rule: tunnelled untouched, the placeholder arrives as sent.
GIT_SSL_NO_VERIFY=1 git ls-remote "https://x-access-token:$GITHUB_TOKEN@other.example/o/r.git" >/dev/null 2>&1
echo "other:$?"
# Another job's placeholder: refused at the proxy.
git ls-remote "https://x-access-token:fpph.GITHUB_TOKEN.job_aaaaaaaaaaaa@github.com/o/r.git" 2>&1
echo "foreign:$?"
for p in /proc/[0-9]*; do cat "$p/environ" 2>/dev/null; echo; done > /artifacts/environ.txt
tar -cf /artifacts/tmp.tar -C /tmp . 2>/dev/null
echo "all done"
