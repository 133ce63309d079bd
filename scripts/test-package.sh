#!/usr/bin/env bash
# Builds the .deb (scripts/package.sh, from the debug build unless CHORUS_DEB_PROFILE says
# otherwise) and checks it: every file it must install (`dpkg-deb -c`), the conffile, the
# maintainer scripts that create the chorus user, and the unit as installed
# (`systemd-analyze verify`, where systemd-analyze exists). Run by scripts/test.sh.
#
#   scripts/test-package.sh
#   CHORUS_DEB_PROFILE=dist scripts/test-package.sh   # the shipped build (a release compile)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export CHORUS_DEB_PROFILE="${CHORUS_DEB_PROFILE:-dev}"
fail() {
    echo "scripts/test-package.sh: $*" >&2
    exit 1
}
for tool in dpkg-deb; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool is missing (apt-get install dpkg)"
done

deb=$(scripts/package.sh --quiet | tail -n 1)
[ -f "$deb" ] || fail "scripts/package.sh printed no package path (got: $deb)"
echo "package: $deb ($(du -h "$deb" | cut -f1))"

contents=$(dpkg-deb -c "$deb")
for path in \
    ./usr/bin/chorus \
    ./usr/lib/systemd/system/chorus.service \
    ./etc/chorus/chorus.toml \
    ./etc/profile.d/chorus.sh \
    ./usr/share/man/man1/chorus.1 \
    ./usr/share/man/man1/chorus-agent.1 \
    ./usr/share/man/man1/chorus-completions.1 \
    ./usr/share/bash-completion/completions/chorus \
    ./usr/share/zsh/vendor-completions/_chorus \
    ./usr/share/fish/vendor_completions.d/chorus.fish \
    ./usr/share/doc/chorus/copyright \
    ./usr/share/doc/chorus/CHANGELOG.md; do
    grep -q " $path\$" <<<"$contents" || fail "$path is not in the package:
$contents"
done
grep -q "task-guard" <<<"$contents" && fail "a page for the hidden task-guard is packaged"
grep -Eq '^-rwxr-xr-x .* \./usr/bin/chorus$' <<<"$contents" || fail "usr/bin/chorus is not mode 0755"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb -e "$deb" "$work/control"
grep -qx "/etc/chorus/chorus.toml" "$work/control/conffiles" || fail "chorus.toml is not a conffile"
grep -q "useradd --system" "$work/control/postinst" || fail "postinst does not create the chorus user"
grep -q "groupadd --system chorus" "$work/control/postinst" || fail "postinst does not create the chorus group"
grep -q "daemon-reload" "$work/control/postinst" || fail "postinst does not reload systemd"
grep -q "^Depends:.*passwd" "$work/control/control" || fail "no dependency on passwd (useradd)"

dpkg-deb -x "$deb" "$work/root"
unit="$work/root/usr/lib/systemd/system/chorus.service"
for line in \
    "Type=notify" \
    "ExecStart=/usr/bin/chorus agent --config /etc/chorus/chorus.toml" \
    'ExecReload=/bin/kill -HUP $MAINPID' \
    "Restart=on-failure" \
    "RestartPreventExitStatus=3" \
    "User=chorus" \
    "StateDirectory=chorus" \
    "RuntimeDirectory=chorus" \
    "NoNewPrivileges=yes" \
    "ProtectSystem=strict"; do
    grep -qxF "$line" "$unit" || fail "the unit has no line $line"
done
# The packaged binary answers, and its generated pages are the ones packaged.
"$work/root/usr/bin/chorus" --version
"$work/root/usr/bin/chorus" man | cmp -s - "$work/root/usr/share/man/man1/chorus.1" ||
    fail "usr/share/man/man1/chorus.1 is not what the packaged binary generates"

if command -v systemd-analyze >/dev/null 2>&1; then
    # The unit as installed, pointing at the packaged binary and man pages (Documentation=).
    mkdir -p "$work/verify"
    sed "s|/usr/bin/chorus|$work/root/usr/bin/chorus|" "$unit" >"$work/verify/chorus.service"
    man_check=(--man=no)
    if command -v man >/dev/null 2>&1; then
        man_check=(--man=yes)
    fi
    MANPATH="$work/root/usr/share/man" systemd-analyze verify "${man_check[@]}" \
        "$work/verify/chorus.service" || fail "systemd-analyze verify found problems in the unit"
    echo "systemd-analyze verify: ok"
else
    echo "systemd-analyze verify: SKIPPED (no systemd-analyze here)"
fi
echo "package checks: ok"
