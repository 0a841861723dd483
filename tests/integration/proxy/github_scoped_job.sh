#!/bin/sh
# The worker job of test_proxy_github.py with proxy.github_scope on: pushes to the job's
# own branches pass, everything else is refused with a message git, curl and gh print.
set -u
export GIT_TERMINAL_PROMPT=0 GH_NO_UPDATE_NOTIFIER=1 GH_PROMPT_DISABLED=1
mkdir -p "$HOME"
git config --global user.name job && git config --global user.email job@example.invalid
mine="flashpods/$FLASHPODS_JOB_ID"
git clone -q "https://x-access-token:$GITHUB_TOKEN@github.com/o/r.git" /tmp/r; echo "clone:$?"
cd /tmp/r || exit 3
echo one > one.txt && git add one.txt && git commit -qm one
git push -q origin "HEAD:refs/heads/$mine/x"; echo "push-mine:$?"
# Over git's 1 MiB post buffer: a chunked upload, after git's probe request.
head -c 3000000 /dev/urandom > big.bin && git add big.bin && git commit -qm big
git push -q origin "HEAD:refs/heads/$mine/big"; echo "push-big:$?"
git push origin HEAD:main > /tmp/main.err 2>&1; echo "push-main:$?"; cat /tmp/main.err
git push origin --delete "$mine/x" > /tmp/del.err 2>&1; echo "push-delete:$?"; cat /tmp/del.err
git tag v1 && git push origin v1 > /tmp/tag.err 2>&1; echo "push-tag:$?"; cat /tmp/tag.err
git push origin "HEAD:refs/heads/$mine/y" HEAD:refs/heads/other > /tmp/two.err 2>&1
echo "push-two:$?"; cat /tmp/two.err
c() { curl -sS -H "Authorization: token $GITHUB_TOKEN" "$@"; }
c -X POST -d '{"title": "x"}' https://api.github.com/repos/o/r/issues -w '\napi-post:%{http_code}\n'
c -X DELETE https://api.github.com/repos/o/r -w '\napi-delete:%{http_code}\n'
gh api -X POST repos/o/r/issues -f title=x > /tmp/gh.err 2>&1; echo "gh-post:$?"; cat /tmp/gh.err; echo
gh api graphql -f query='{ viewer { login } }' > /tmp/gq.out 2>&1; echo "gh-query:$?"
gh api graphql -f query='mutation { addStar(input: {starrableId: "x"}) { clientMutationId } }' \
	> /tmp/gm.err 2>&1; echo "gh-mutation:$?"; cat /tmp/gm.err; echo
python3 /tmp/hostile_push.py
# Still served after all that.
c https://api.github.com/repos/o/r -o /dev/null -w 'api-get:%{http_code}\n'
gh api repos/o/r > /dev/null 2>&1; echo "gh-get:$?"
echo "all done"
