# scripts/lib.sh: shared by scripts/test, scripts/demo and .ci/run.
#
# Installs what reliq needs from Debian's packages when it is missing, builds
# and installs the extension, and runs test programs as an unprivileged user
# (initdb refuses to run as root; CI runs as root).

# patroni, etcd-server and python3-etcd: the high-availability tests (019);
# prometheus: promtool and the Prometheus server of 022.
RELIQ_PACKAGES="postgresql-15 postgresql-server-dev-15 libnats-dev libcurl4-openssl-dev nats-server libipc-run-perl make gcc curl openssl patroni etcd-server python3-etcd prometheus"
# What scripts/package needs to build the Debian package.
RELIQ_PACKAGE_TOOLS="dpkg-dev debhelper postgresql-server-dev-all libnats-dev make gcc"
#
# PG_CONFIG chooses the PostgreSQL to build and test against (Debian 12's
# PostgreSQL 15 by default; scripts/platforms pg18 prints another), and
# RELIQ_NATS_SERVER the nats-server binary (Debian's by default; see
# scripts/platforms nats-server).  Everything else follows from them.
RELIQ_DEBIAN_PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
export PG_CONFIG=${PG_CONFIG:-$RELIQ_DEBIAN_PG_CONFIG}
if [ -x "$PG_CONFIG" ]; then
	PG_BINDIR=$("$PG_CONFIG" --bindir)
else
	PG_BINDIR=$(dirname "$PG_CONFIG")
fi
# The test harness (ReliqTest::Local, ReliqTest::Patroni) reads these.
export PG_BINDIR RELIQ_PG_BINDIR=$PG_BINDIR

reliq_root() {
	cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd
}

# Run a command as root: directly, or through sudo.
as_root() {
	if [ "$(id -u)" = 0 ]; then
		"$@"
	elif command -v sudo >/dev/null; then
		sudo "$@"
	else
		echo "reliq: '$*' needs root, and sudo is not installed" >&2
		return 1
	fi
}

reliq_missing_packages() {
	local missing=""
	# Debian's PostgreSQL 15 is always installed: the packaging, the demo's
	# defaults and the upgrade test use it besides another PG_CONFIG.
	[ -x /usr/lib/postgresql/15/bin/initdb ] || missing="$missing postgresql-15"
	[ -x "$RELIQ_DEBIAN_PG_CONFIG" ] && [ -f /usr/include/postgresql/15/server/postgres.h ] || missing="$missing postgresql-server-dev-15"
	[ -f /usr/include/nats/nats.h ] || missing="$missing libnats-dev"
	command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing="$missing nats-server"
	perl -MIPC::Run -e 1 2>/dev/null || missing="$missing libipc-run-perl"
	command -v make >/dev/null || missing="$missing make"
	command -v gcc >/dev/null || missing="$missing gcc"
	command -v curl >/dev/null || missing="$missing curl"
	command -v openssl >/dev/null || missing="$missing openssl"
	command -v patroni >/dev/null || missing="$missing patroni"
	command -v etcd >/dev/null || [ -x /usr/bin/etcd ] || missing="$missing etcd-server"
	dpkg-query -W -f='${Status}' python3-etcd 2>/dev/null | grep -q 'ok installed' || missing="$missing python3-etcd"
	command -v promtool >/dev/null && command -v prometheus >/dev/null || missing="$missing prometheus"
	echo $missing
}

reliq_ensure_packages() {
	local missing
	missing=$(reliq_missing_packages)
	if [ -z "$missing" ]; then
		reliq_check_pg_config
		return
	fi
	echo "reliq: installing Debian packages:$missing"
	as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $RELIQ_PACKAGES >/dev/null
	missing=$(reliq_missing_packages)
	if [ -n "$missing" ]; then
		echo "reliq: still missing after apt-get:$missing" >&2
		return 1
	fi
	reliq_check_pg_config
}

# A PG_CONFIG given by the user must be a PostgreSQL reliq supports.
reliq_check_pg_config() {
	local version
	if [ ! -x "$PG_CONFIG" ]; then
		echo "reliq: PG_CONFIG=$PG_CONFIG is not an executable pg_config" >&2
		return 1
	fi
	version=$("$PG_CONFIG" --version | sed -n 's/^PostgreSQL \([0-9]*\).*/\1/p')
	case "$version" in
	15 | 16 | 17 | 18) ;;
	*)
		echo "reliq: $PG_CONFIG is $("$PG_CONFIG" --version); reliq supports PostgreSQL 15 to 18" >&2
		return 1
		;;
	esac
	if [ ! -x "$PG_BINDIR/initdb" ] || [ ! -x "$PG_BINDIR/pg_ctl" ]; then
		echo "reliq: $PG_BINDIR has no initdb or pg_ctl: the tests and the demo need the server's programs beside $PG_CONFIG" >&2
		return 1
	fi
}

# Build and install the extension (the install needs root).
reliq_build_install() {
	local root
	root=$(reliq_root)
	make -C "$root" -s PG_CONFIG="$PG_CONFIG" >/dev/null
	as_root make -C "$root" -s PG_CONFIG="$PG_CONFIG" install >/dev/null
	echo "reliq: built and installed into $($PG_CONFIG --pkglibdir)"
}

# RELIQ_UPGRADE_PG_CONFIG: the pg_config of a newer PostgreSQL major that
# test/t/033_pg_upgrade.pl upgrades to; reliq is built and installed there
# too, from a copy of the tree, so the objects here stay PG_CONFIG's.
reliq_build_install_upgrade_target() {
	[ -n "${RELIQ_UPGRADE_PG_CONFIG:-}" ] || return 0
	local root copy
	root=$(reliq_root)
	# that installation's test lock too (scripts/test), held to the end
	exec 8>"${TMPDIR:-/tmp}/reliq-test-$(echo "$RELIQ_UPGRADE_PG_CONFIG" | cksum | cut -d' ' -f1).lock"
	if ! flock -n 8; then
		echo "reliq: waiting for another test run with $RELIQ_UPGRADE_PG_CONFIG to end"
		flock 8
	fi
	copy=$(mktemp -d "${TMPDIR:-/tmp}/reliq-upgrade-build.XXXXXX")
	tar -C "$root" --exclude=./.git --exclude=./tmp_check --exclude=./tmp_check_regress \
		--exclude=./results --exclude='*.o' --exclude='*.so' --exclude='*.bc' -cf - . | tar -C "$copy" -xf -
	make -C "$copy" -s PG_CONFIG="$RELIQ_UPGRADE_PG_CONFIG" >/dev/null
	as_root make -C "$copy" -s PG_CONFIG="$RELIQ_UPGRADE_PG_CONFIG" install >/dev/null
	rm -rf "$copy"
	echo "reliq: built and installed into $("$RELIQ_UPGRADE_PG_CONFIG" --pkglibdir) too (the pg_upgrade test's new major)"
}

# RELIQ_USE_INSTALLED=1: test the extension that is installed already (the
# Debian package, in CI) instead of building and installing this tree;
# only the test helper natstool is built.
reliq_use_installed() {
	local root pkglib extdir
	root=$(reliq_root)
	pkglib=$($PG_CONFIG --pkglibdir)
	extdir=$($PG_CONFIG --sharedir)/extension
	if [ ! -f "$pkglib/reliq.so" ] || [ ! -f "$extdir/reliq.control" ]; then
		echo "reliq: RELIQ_USE_INSTALLED is set, but reliq is not installed in $pkglib" >&2
		return 1
	fi
	make -C "$root" -s PG_CONFIG="$PG_CONFIG" test/tools/natstool >/dev/null
	echo "reliq: testing the installed reliq ($(dpkg-query -S "$pkglib/reliq.so" 2>/dev/null || echo "$pkglib/reliq.so, not from a package"))"
}

# Build tools for scripts/package.
reliq_ensure_package_tools() {
	local missing=""
	command -v dpkg-buildpackage >/dev/null || missing="$missing dpkg-dev"
	command -v dh >/dev/null || missing="$missing debhelper"
	[ -f /usr/share/perl5/Debian/Debhelper/Sequence/pgxs_loop.pm ] || missing="$missing postgresql-server-dev-all"
	[ -f /usr/include/nats/nats.h ] || missing="$missing libnats-dev"
	[ -z "$missing" ] && return 0
	echo "reliq: installing Debian packages to build the package:$missing"
	as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $RELIQ_PACKAGE_TOOLS >/dev/null
}

# One version in three places: reliq.control (default_version), the
# library (src/version.h) and the package (debian/changelog).  Prints it.
reliq_check_versions() {
	local root control library package
	root=$(reliq_root)
	control=$(sed -n "s/^default_version = '\(.*\)'$/\1/p" "$root/reliq.control")
	library=$(sed -n 's/^#define RELIQ_VERSION "\(.*\)"$/\1/p' "$root/src/version.h")
	package=$(sed -n '1s/^reliq (\([^-)]*\)-[^)]*).*/\1/p' "$root/debian/changelog")
	if [ -z "$control" ] || [ "$control" != "$library" ] || [ "$control" != "$package" ]; then
		echo "reliq: versions disagree: reliq.control '$control', src/version.h '$library', debian/changelog '$package'" >&2
		return 1
	fi
	[ -f "$root/reliq--$control.sql" ] || ls "$root"/reliq--*--"$control".sql >/dev/null 2>&1 || {
		echo "reliq: no install or upgrade script reaches version $control" >&2
		return 1
	}
	echo "$control"
}

# Run "$@" from a copy of the repository owned by an unprivileged user when
# we are root (PostgreSQL will not run as root); from the checkout otherwise.
# RELIQ_WORKDIR names the directory the command runs in.
reliq_as_test_user() {
	local root
	root=$(reliq_root)
	if [ "$(id -u)" != 0 ]; then
		(cd "$root" && RELIQ_WORKDIR="$root" "$@")
		return
	fi
	local user=${RELIQ_TEST_USER:-postgres}
	local work
	work=$(mktemp -d /tmp/reliq-run.XXXXXX)
	tar -C "$root" --exclude=./tmp_check --exclude=./tmp_check_regress \
		--exclude=./results --exclude=./.git -cf - . | tar -C "$work" -xf -
	chown -R "$user" "$work"
	local status=0
	(cd "$work" && runuser -u "$user" -- env RELIQ_WORKDIR="$work" PATH="$PATH" "$@") || status=$?
	if [ "$status" = 0 ] && [ -z "${RELIQ_KEEP_WORKDIR:-}" ]; then
		rm -rf "$work"
	else
		echo "reliq: test files and logs kept in $work"
	fi
	return $status
}
