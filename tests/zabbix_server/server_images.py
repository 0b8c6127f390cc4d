"""Root filesystems for the Zabbix server matrix: one per Debian suite, built with debootstrap and cached.

Each image is `debootstrap --variant=minbase SUITE` plus that suite's own PostgreSQL, zabbix-server-pgsql,
zabbix-frontend-php and PHP, installed with apt inside the root (services never started: policy-rc.d says no).
Images live in /root/.cache/zts/server-rootfs/SUITE-zabbix-server (ZTS_CACHE moves the cache) and are rebuilt
when what goes in them changes: the suite, the package list, or BUILD_RECIPE below (all recorded in the image's
.zts-image file). One lock per image: different suites build at the same time, the same one never twice.
The lab (lab.py) runs a server on an overlay of an image, so the image itself stays as built.

    python3 tests/zabbix_server/server_images.py build [SUITE ...]     build (or confirm) the images
    python3 tests/zabbix_server/server_images.py show                  what is cached, with Zabbix versions

Needs root, debootstrap, util-linux (unshare), and the Debian mirror (ZTS_MIRROR, default deb.debian.org).
"""

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time

CACHE = os.environ.get('ZTS_CACHE', '/root/.cache/zts')
IMAGES_DIR = os.path.join(CACHE, 'server-rootfs')
MIRROR = os.environ.get('ZTS_MIRROR', 'http://deb.debian.org/debian')

# The Zabbix server versions Debian's suites carry (checked with apt in each suite's root).
SUITES = {'bullseye': '5.0', 'bookworm': '6.0', 'trixie': '7.0'}
# php-cli: the frontend is served by PHP's built-in web server (php -S); php-pgsql: its database driver;
# php-gd: the frontend's charts (chart2.php); fonts-dejavu-core: their text; locales: the frontend refuses to
# draw anything without its users' locale (en_US.UTF-8, generated at build).
PACKAGES = ['postgresql', 'zabbix-server-pgsql', 'zabbix-frontend-php', 'php-pgsql', 'php-cli', 'php-gd',
            'fonts-dejavu-core', 'locales']
# Only in the image the pictures are taken in (lab.PICTURES_VERSION): Debian's headless Chromium renders the
# frontend's dashboard page.
EXTRA_PACKAGES = {'trixie': ['chromium', 'fonts-liberation']}
# Bump when the way images are built changes (not only what goes in them).
BUILD_RECIPE = 2


class ImageError(Exception):
    pass


def image_name(suite):
    return '{0}-zabbix-server'.format(suite)


def image_path(suite):
    return os.path.join(IMAGES_DIR, image_name(suite))


def packages(suite):
    return PACKAGES + EXTRA_PACKAGES.get(suite, [])


def image_key(suite):
    return {'suite': suite, 'packages': packages(suite), 'recipe': BUILD_RECIPE}


def image_info(suite):
    """The image's .zts-image record, or None when it is missing or was built from a different key."""
    try:
        with open(os.path.join(image_path(suite), '.zts-image')) as handle:
            info = json.load(handle)
    except (OSError, ValueError):
        return None
    return info if info.get('key') == image_key(suite) else None


def _run(argv, **kwargs):
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          **kwargs)
    if proc.returncode != 0:
        raise ImageError('{0} failed ({1}):\n{2}'.format(' '.join(argv[:8]), proc.returncode, proc.stdout[-3000:]))
    return proc.stdout


def chroot_run(root, script):
    """A shell script chrooted in root, in private PID and mount namespaces: whatever a maintainer script
    starts dies with the namespace, and the /proc, /sys, /dev mounts never outlive it."""
    wrapper = ('set -e; R="$1"; mount -t proc proc "$R/proc"; mount -t sysfs sys "$R/sys"; '
               'mount --rbind /dev "$R/dev"; cp /etc/resolv.conf "$R/etc/resolv.conf"; '
               'chroot "$R" /bin/sh -ec "$2"')
    env = dict(os.environ, DEBIAN_FRONTEND='noninteractive', LC_ALL='C.UTF-8',
               PATH='/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin')
    return _run(['unshare', '--mount', '--pid', '--fork', '--kill-child', '--propagation', 'private',
                 'sh', '-c', wrapper, 'chroot_run', root, script], env=env)


def build(suite, log=lambda msg: None):
    """Build the suite's image unless a current one is cached. Returns (info, seconds spent building)."""
    if suite not in SUITES:
        raise ImageError('unknown suite {0!r}; known: {1}'.format(suite, ', '.join(sorted(SUITES))))
    os.makedirs(IMAGES_DIR, exist_ok=True)
    with open(os.path.join(IMAGES_DIR, image_name(suite) + '.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        info = image_info(suite)
        if info:
            return info, 0.0
        start = time.time()
        final = image_path(suite)
        work = final + '.build'
        if os.path.exists(work):
            shutil.rmtree(work)
        log('{0}: debootstrap --variant=minbase from {1}'.format(suite, MIRROR))
        _run(['unshare', '--mount', '--pid', '--fork', '--kill-child', '--propagation', 'private',
              'debootstrap', '--variant=minbase', suite, work, MIRROR])
        with open(os.path.join(work, 'usr', 'sbin', 'policy-rc.d'), 'w') as handle:
            handle.write('#!/bin/sh\nexit 101\n')
        os.chmod(os.path.join(work, 'usr', 'sbin', 'policy-rc.d'), 0o755)
        log('{0}: apt-get install {1}'.format(suite, ' '.join(packages(suite))))
        chroot_run(work, 'apt-get -q update >/dev/null; '
                         'apt-get -q -y install --no-install-recommends {0} >/dev/null; '
                         'apt-get clean; rm -rf /var/lib/apt/lists/*; '
                         "sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' /etc/locale.gen; "
                         'locale-gen >/dev/null'.format(' '.join(packages(suite))))
        versions = chroot_run(work, "dpkg-query -W -f '${Package} ${Version}\\n' zabbix-server-pgsql "
                                    "zabbix-frontend-php postgresql php-cli")
        info = {'key': image_key(suite), 'image': image_name(suite),
                'versions': dict(line.split(' ', 1) for line in versions.strip().splitlines()),
                'built': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                'build_seconds': round(time.time() - start)}
        with open(os.path.join(work, '.zts-image'), 'w') as handle:
            json.dump(info, handle, indent=1)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(work, final)
        log('{0}: built in {1:.0f}s: {2}'.format(suite, time.time() - start, info['versions']))
        return info, time.time() - start


def main(argv):
    if len(argv) >= 2 and argv[1] == 'build':
        for suite in argv[2:] or sorted(SUITES):
            build(suite, log=lambda msg: sys.stderr.write('server_images: ' + msg + '\n'))
        return 0
    if len(argv) == 2 and argv[1] == 'show':
        for suite in sorted(SUITES):
            info = image_info(suite)
            print('{0:10} {1}'.format(suite, json.dumps(info['versions']) if info else 'not built (or stale)'))
        return 0
    print(__doc__)
    return 2


if __name__ == '__main__':
    sys.exit(main(sys.argv))
