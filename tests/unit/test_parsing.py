# -*- coding: utf-8 -*-
# Copyright: zabbix-tcp-status contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure tests of the counter's parsers and argument checks, on captured kernel bytes.

Plain unittest, standard library only and Python 2.7-safe, so that the same file runs under pytest and, unchanged,
under the targets' old interpreters where pytest is not installed (test_old_pythons.py runs it there):

    PYTHONPATH=roles/zabbix_tcp_status/module_utils python2.7 -m unittest discover -s tests/unit -p test_parsing.py

Every expected count comes from the ``ss`` socket list stored in tests/fixtures/manifest.json at capture time
(tests/fixtures/capture_netlink.py), never from the counter itself.
"""

from __future__ import absolute_import, division, print_function

import errno
import json
import os
import struct
import unittest

import tcp_status_counter as tsc  # the module under test (the role's module_utils is on the import path)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FIXTURES = os.path.join(REPO, 'tests', 'fixtures')

# include/net/tcp_states.h, written out here on purpose (not taken from the counter).
KERNEL_CODES = {'ESTABLISHED': 1, 'SYN_SENT': 2, 'SYN_RECV': 3, 'FIN_WAIT1': 4, 'FIN_WAIT2': 5,
                'TIME_WAIT': 6, 'CLOSE': 7, 'CLOSE_WAIT': 8, 'LAST_ACK': 9, 'LISTEN': 10, 'CLOSING': 11}
NETSTAT_NAMES = ('ESTABLISHED', 'SYN_SENT', 'SYN_RECV', 'FIN_WAIT1', 'FIN_WAIT2', 'TIME_WAIT', 'CLOSE',
                 'CLOSE_WAIT', 'LAST_ACK', 'LISTEN', 'CLOSING')
# ss(8) spellings (its state names and filter names) -> netstat names.
SS_NAMES = {'estab': 'ESTABLISHED', 'established': 'ESTABLISHED', 'syn-sent': 'SYN_SENT',
            'syn-recv': 'SYN_RECV', 'fin-wait-1': 'FIN_WAIT1', 'fin-wait-2': 'FIN_WAIT2',
            'time-wait': 'TIME_WAIT', 'closed': 'CLOSE', 'close-wait': 'CLOSE_WAIT', 'last-ack': 'LAST_ACK',
            'listen': 'LISTEN', 'listening': 'LISTEN', 'closing': 'CLOSING'}

with open(os.path.join(FIXTURES, 'manifest.json')) as _handle:
    MANIFEST = json.load(_handle)
PORTS = MANIFEST['ports']
NLMSG_DONE = 3


def fixture_bytes(relpath):
    with open(os.path.join(FIXTURES, relpath), 'rb') as handle:
        return handle.read()


def capture(name):
    """(manifest entry, list of the reply chunks as recv() returned them)."""
    for entry in MANIFEST['netlink']:
        if entry['name'] == name:
            data = fixture_bytes(entry['file'])
            chunks, offset = [], 0
            for size in entry['chunks']:
                chunks.append(data[offset:offset + size])
                offset += size
            assert offset == len(data), 'manifest chunk sizes do not add up for ' + name
            return entry, chunks
    raise KeyError(name)


def expected(family, states=None, local=None, remote=None):
    """{kernel code: count} of the captured ss socket list, filtered like the counter filters."""
    tally = {}
    for fam, state, lport, rport in MANIFEST['ss_sockets']:
        if fam != family or (states is not None and state not in states):
            continue
        if (local is not None and lport not in local) or (remote is not None and rport not in remote):
            continue
        tally[KERNEL_CODES[state]] = tally.get(KERNEL_CODES[state], 0) + 1
    return tally


def nonzero(tally):
    return dict((code, count) for code, count in enumerate(tally) if count)


def port_table(ports):
    return None if ports is None else tsc.parse_ports(','.join(str(port) for port in ports))


def feed_netlink(chunks, local=None, remote=None):
    """Parse chunk after chunk as the counter's receive loop does; (tally, done flags)."""
    tally = [0] * 256
    flags = [tsc.count_netlink_messages(chunk, len(chunk), tally, port_table(local), port_table(remote))
             for chunk in chunks]
    return tally, flags


def raises(exc_class, words, function, *args):
    """Call function(*args); it must raise exc_class with every one of words in its message."""
    try:
        function(*args)
    except exc_class as exc:
        message = str(exc)
        for word in words:
            assert word in message, 'message {0!r} does not name {1!r}'.format(message, word)
        assert '\n' not in message, 'message is not one line: {0!r}'.format(message)
        return exc
    except Exception as exc:  # pylint: disable=broad-except
        raise AssertionError('expected {0}, got {1}: {2}'.format(exc_class.__name__, type(exc).__name__, exc))
    raise AssertionError('expected {0}, nothing was raised by {1}{2}'.format(
        exc_class.__name__, function.__name__, repr(args)[:160]))


def with_header(buf, offset, length=None, kind=None):
    """A copy of buf with the nlmsghdr at offset given another length and/or type."""
    buf = bytearray(buf)
    old_len, old_kind = struct.unpack_from('=IH', buf, offset)
    struct.pack_into('=IH', buf, offset, old_len if length is None else length, old_kind if kind is None else kind)
    return bytes(buf)


def proc_text(family):
    return fixture_bytes('proc/{0}.txt'.format('tcp' if family == 'ipv4' else 'tcp6'))


def count_proc(data, local=None, remote=None, source='/proc/net/tcp'):
    tally = [0] * 256
    returned = tsc.count_proc_lines(data, tally, port_table(local), port_table(remote), source)
    assert returned is tally
    return tally


def ports_of(table):
    return [port for port in range(65536) if table[port]]


class NetlinkReplies(unittest.TestCase):
    """netlink: real sock_diag dump replies, as recv() returned them."""

    def test_netlink_fixture_is_multipart(self):
        for name in ('ipv4-all', 'ipv6-all'):
            entry, chunks = capture(name)
            assert len(chunks) >= 3, '{0}: {1} chunks, want several'.format(name, len(chunks))
            assert entry['family'] == name[:4]

    def test_netlink_full_dump_each_family(self):
        for family in ('ipv4', 'ipv6'):
            _entry, chunks = capture(family + '-all')
            tally, flags = feed_netlink(chunks)
            assert flags == [False] * (len(chunks) - 1) + [True], '{0}: done flags {1}'.format(family, flags)
            assert nonzero(tally) == expected(family), '{0}: {1} != ss {2}'.format(
                family, nonzero(tally), expected(family))

    def test_netlink_known_mix(self):
        _entry, chunks = capture('ipv4-all')
        tally, _flags = feed_netlink(chunks)
        assert nonzero(tally) == {1: 45, 2: 2, 5: 3, 6: 5, 8: 3, 10: 2}, nonzero(tally)
        _entry, chunks = capture('ipv6-all')
        tally, _flags = feed_netlink(chunks)
        assert nonzero(tally) == {1: 27, 5: 2, 6: 4, 8: 2, 10: 2}, nonzero(tally)

    def test_netlink_both_families_into_one_tally(self):
        tally = [0] * 256
        for family in ('ipv4', 'ipv6'):
            for chunk in capture(family + '-all')[1]:
                tsc.count_netlink_messages(chunk, len(chunk), tally)
        total = len(MANIFEST['ss_sockets'])
        assert sum(tally) == total, (sum(tally), total)

    def test_netlink_reused_buffer_honours_length(self):
        """The receive loop reuses one big buffer: bytes past `length` (stale data) must be ignored."""
        _entry, chunks = capture('ipv4-all')
        buf = bytearray(b'\xff' * 65536)
        tally = [0] * 256
        done = []
        for chunk in chunks:
            buf[:len(chunk)] = chunk
            done.append(tsc.count_netlink_messages(buf, len(chunk), tally))
        assert done[-1] is True and not any(done[:-1])
        assert nonzero(tally) == expected('ipv4')

    def test_netlink_accumulates_into_existing_tally(self):
        _entry, chunks = capture('ipv6-all')
        tally = [0] * 256
        tally[KERNEL_CODES['LISTEN']] = 100
        for chunk in chunks:
            tsc.count_netlink_messages(chunk, len(chunk), tally)
        assert tally[KERNEL_CODES['LISTEN']] == 100 + expected('ipv6')[KERNEL_CODES['LISTEN']]

    def test_netlink_kernel_state_mask(self):
        entry, chunks = capture('ipv4-tw-cw-listen')
        assert entry['state_mask'] == (1 << 6) | (1 << 8) | (1 << 10)
        tally, flags = feed_netlink(chunks)
        assert flags[-1] is True
        want = expected('ipv4', states=('TIME_WAIT', 'CLOSE_WAIT', 'LISTEN'))
        assert nonzero(tally) == want == {6: 5, 8: 3, 10: 2}, (nonzero(tally), want)

    def test_netlink_empty_dump(self):
        _entry, chunks = capture('ipv6-empty')
        assert chunks == [chunks[0]] and len(chunks[0]) == 20
        tally, flags = feed_netlink(chunks)
        assert flags == [True] and not any(tally)

    def test_netlink_no_bytes_is_not_done(self):
        tally = [0] * 256
        assert tsc.count_netlink_messages(b'', 0, tally) is False and not any(tally)

    def test_netlink_local_port_filter(self):
        v4, v6, dual = PORTS['ipv4_listener'], PORTS['ipv6_listener'], PORTS['dual_stack_listener']
        for family, local in (('ipv4', [v4]), ('ipv6', [v6]), ('ipv6', [dual]), ('ipv4', [v4, v6, dual]),
                              ('ipv6', [v6, dual]), ('ipv4', [PORTS['full_backlog_listener']])):
            tally, _flags = feed_netlink(capture(family + '-all')[1], local=local)
            want = expected(family, local=local)
            assert want, 'the capture has sockets on local ports {0}'.format(local)
            assert nonzero(tally) == want, (family, local, nonzero(tally), want)

    def test_netlink_remote_port_filter(self):
        v4, v6, dual = PORTS['ipv4_listener'], PORTS['ipv6_listener'], PORTS['dual_stack_listener']
        for family, remote in (('ipv4', [v4]), ('ipv6', [v6]), ('ipv4', [dual]), ('ipv6', [dual]),
                               ('ipv4', [PORTS['full_backlog_listener']])):
            tally, _flags = feed_netlink(capture(family + '-all')[1], remote=remote)
            assert nonzero(tally) == expected(family, remote=remote), (family, remote, nonzero(tally))
        # IPv4 clients of the dual-stack listener are IPv4 sockets; its server ends are IPv6.
        assert expected('ipv4', remote=[dual]) == {1: 3} and not expected('ipv6', remote=[dual])
        assert expected('ipv6', local=[dual]) == {1: 3, 10: 1}

    def test_netlink_both_port_filters(self):
        v4 = PORTS['ipv4_listener']
        rows = [row for row in MANIFEST['ss_sockets'] if row[0] == 'ipv4' and row[2] == v4 and row[3] != 0]
        client_port = rows[0][3]
        tally, _flags = feed_netlink(capture('ipv4-all')[1], local=[v4], remote=[client_port])
        assert nonzero(tally) == expected('ipv4', local=[v4], remote=[client_port]) and sum(tally) == 1
        tally, _flags = feed_netlink(capture('ipv4-all')[1], local=[v4], remote=[v4])
        assert not any(tally)

    def test_netlink_range_filter(self):
        low = min(PORTS.values())
        high = max(PORTS.values())
        tally = [0] * 256
        table = tsc.parse_ports('{0}-{1}'.format(low, high))
        for chunk in capture('ipv4-all')[1]:
            tsc.count_netlink_messages(chunk, len(chunk), tally, table, None)
        assert nonzero(tally) == expected('ipv4', local=range(low, high + 1))


class NetlinkErrors(unittest.TestCase):
    """netlink: refusals, kernel errors and garbage."""

    def test_netlink_error_enoent_is_refused(self):
        """NLMSG_ERROR -ENOENT (real: a family without a sock_diag handler) -> NetlinkRefused."""
        _entry, chunks = capture('refused-family-enoent')
        assert struct.unpack_from('=IH', chunks[0])[1] == 2  # NLMSG_ERROR
        exc = raises(tsc.NetlinkRefused, ['ENOENT'], feed_netlink, chunks)
        assert exc.errno == errno.ENOENT
        assert isinstance(exc, tsc.BackendUnavailable), 'a refusal must let backend=auto fall back to /proc'

    def test_netlink_done_enoent_is_refused(self):
        """Kernel 6.x reports a missing inet_diag handler (e.g. no tcp_diag) as NLMSG_DONE carrying -ENOENT.

        Real capture: a dump request for a protocol without a handler. It must be a
        refusal (BackendUnavailable) like NLMSG_ERROR -ENOENT, or backend=auto never
        falls back to /proc on such a kernel.
        """
        _entry, chunks = capture('refused-protocol-enoent')
        length, kind, _flags, _seq, _pid, status = struct.unpack_from('=IHHIIi', chunks[0])
        assert (length, kind, status) == (20, NLMSG_DONE, -errno.ENOENT)
        exc = raises(tsc.TcpStatusError, ['ENOENT'], feed_netlink, chunks)
        assert isinstance(exc, tsc.BackendUnavailable), (
            'NLMSG_DONE with -ENOENT raised {0} ({1}), not a BackendUnavailable such as NetlinkRefused: '
            'backend=auto would fail instead of falling back to /proc'.format(type(exc).__name__, exc))

    def test_netlink_done_negative_status(self):
        chunk = bytearray(capture('ipv6-empty')[1][0])
        struct.pack_into('=i', chunk, 16, -errno.EINTR)
        raises(tsc.TcpStatusError, ['EINTR'], feed_netlink, [bytes(chunk)])

    def test_netlink_error_too_short(self):
        _entry, chunks = capture('refused-family-enoent')
        short = with_header(chunks[0][:16], 0, length=16)
        raises(tsc.ParseError, ['too short'], feed_netlink, [short])

    def test_netlink_message_past_the_end(self):
        chunk = capture('ipv4-all')[1][0]
        for cut in (1, 4, 60):
            raises(tsc.ParseError, ['claims length'], feed_netlink, [chunk[:-cut]])

    def test_netlink_length_beyond_buffer(self):
        chunk = capture('ipv4-all')[1][0]
        raises(tsc.ParseError, ['claims length 100000'], feed_netlink, [with_header(chunk, 0, length=100000)])

    def test_netlink_short_header(self):
        chunk = capture('ipv4-all')[1][0]
        for extra in (b'\x00' * 8, b'\x7c\x00\x00\x00\x14\x00', b'\x00'):
            raises(tsc.ParseError, ['inside a message header'], feed_netlink, [chunk + extra])
        raises(tsc.ParseError, ['inside a message header'], feed_netlink, [chunk[:10]])

    def test_netlink_length_below_header(self):
        chunk = capture('ipv4-all')[1][0]
        for bad in (0, 8, 15):
            raises(tsc.ParseError, ['claims length {0}'.format(bad)], feed_netlink, [with_header(chunk, 0, length=bad)])

    def test_netlink_short_diag_message(self):
        chunk = capture('ipv4-all')[1][0]
        short = with_header(chunk[:40], 0, length=40)
        raises(tsc.ParseError, ['sock_diag message', '40 bytes'], feed_netlink, [short])

    def test_netlink_unknown_type(self):
        chunk = capture('ipv4-all')[1][0]
        raises(tsc.ParseError, ['type 153'], feed_netlink, [with_header(chunk, 0, kind=153)])
        second = struct.unpack_from('=I', chunk)[0]
        second = (second + 3) & ~3
        raises(tsc.ParseError, ['type 1', 'byte {0}'.format(second)], feed_netlink,
               [with_header(chunk, second, kind=1)])

    def test_netlink_random_garbage(self):
        raises(tsc.ParseError, [], feed_netlink, [b'\xde\xad\xbe\xef' * 8])


class ProcText(unittest.TestCase):
    """/proc/net/tcp{,6}: real text."""

    def test_proc_full_each_family(self):
        for family in ('ipv4', 'ipv6'):
            assert nonzero(count_proc(proc_text(family))) == expected(family), family

    def test_proc_text_and_bytes(self):
        for family in ('ipv4', 'ipv6'):
            data = proc_text(family)
            assert count_proc(data.decode('ascii')) == count_proc(data)

    def test_proc_matches_netlink_capture(self):
        for family in ('ipv4', 'ipv6'):
            assert count_proc(proc_text(family)) == feed_netlink(capture(family + '-all')[1])[0]

    def test_proc_port_filters(self):
        v4, v6, dual = PORTS['ipv4_listener'], PORTS['ipv6_listener'], PORTS['dual_stack_listener']
        for family, local, remote in (('ipv4', [v4], None), ('ipv6', [v6], None), ('ipv6', [dual], None),
                                      ('ipv4', None, [v4]), ('ipv6', None, [v6]), ('ipv4', None, [dual]),
                                      ('ipv6', None, [dual]), ('ipv4', [v4], [v4]),
                                      ('ipv4', [PORTS['full_backlog_listener']], None)):
            tally = count_proc(proc_text(family), local, remote)
            assert nonzero(tally) == expected(family, local=local, remote=remote), (family, local, remote)

    def test_proc_header_only(self):
        data = proc_text('ipv4').split(b'\n')[0] + b'\n'
        assert not any(count_proc(data))

    def test_proc_without_header(self):
        data = b'\n'.join(proc_text('ipv4').split(b'\n')[1:])
        raises(tsc.ParseError, ['/proc/net/tcp6', 'header'], count_proc, data, None, None, '/proc/net/tcp6')
        raises(tsc.ParseError, ['header'], count_proc, b'')
        raises(tsc.ParseError, ['header'], count_proc, u'')

    def test_proc_malformed_lines(self):
        lines = proc_text('ipv4').split(b'\n')
        for bad in (b'   7: garbage', b'   7: 0100007F:1B59 00000000:0000', b'0100007F:1B59 00000000:0000 0A 0 0',
                    b'   7: 0100007F:1B59 00000000:0000 ZZ 00000000:00000000'):
            data = b'\n'.join(lines[:3] + [bad] + lines[3:])
            raises(tsc.ParseError, ['line 4', bad[:20].decode('ascii')], count_proc, data)

    def test_proc_malformed_port_when_filtering(self):
        lines = proc_text('ipv4').split(b'\n')
        bad = b'   7: 0100007F:XYZ! 00000000:0000 0A 00000000:00000000'
        data = b'\n'.join(lines[:2] + [bad] + lines[2:])
        raises(tsc.ParseError, ['line 3'], count_proc, data, [80])

    def test_proc_state_out_of_range(self):
        lines = proc_text('ipv4').split(b'\n')
        for state in (b'1FF', b'-1', b'-0A'):
            bad = b'   7: 0100007F:1B59 00000000:0000 ' + state + b' 00000000:00000000'
            data = b'\n'.join(lines[:1] + [bad] + lines[1:])
            raises(tsc.ParseError, ['line 2'], count_proc, data)


class Arguments(unittest.TestCase):
    """States, ports and the other arguments; the JSON answer."""

    def test_states_table(self):
        assert tuple(tsc.STATES) == NETSTAT_NAMES

    def test_normalize_netstat_any_case(self):
        for name in NETSTAT_NAMES:
            mixed = ''.join(char.lower() if index % 2 else char for index, char in enumerate(name))
            for spelling in (name, name.lower(), name.title(), mixed, ' ' + name + ' '):
                assert tsc.normalize_state(spelling) == name, spelling

    def test_normalize_ss_spellings(self):
        for spelling, name in SS_NAMES.items():
            for variant in (spelling, spelling.upper(), spelling.capitalize(), spelling.replace('-', '_')):
                assert tsc.normalize_state(variant) == name, (variant, tsc.normalize_state(variant))
        assert tsc.normalize_state('SYN-RECEIVED') == 'SYN_RECV'
        assert tsc.normalize_state(u'time-wait') == 'TIME_WAIT'

    def test_normalize_unknown_names_the_value(self):
        for bad in ('FOO', '', 'all', 'ESTABLISHED;', 'TIME WAIT', 'LISTEN1', 'UNKNOWN', 'NONE', 'SYN'):
            raises(tsc.ArgumentError, [repr(bad), 'ESTABLISHED', 'TIME_WAIT'], tsc.normalize_state, bad)

    def test_normalize_states(self):
        assert tsc.normalize_states(None) == tsc.normalize_states([]) == NETSTAT_NAMES
        assert tsc.normalize_states(['listening', 'ESTAB', 'listen', 'time-wait']) == (
            'ESTABLISHED', 'TIME_WAIT', 'LISTEN')
        raises(tsc.ArgumentError, ["'bogus'"], tsc.normalize_states, ['LISTEN', 'bogus'])

    def test_parse_ports_forms(self):
        assert tsc.parse_ports(None) is None
        assert tsc.parse_ports('') is None
        assert tsc.parse_ports([]) is None
        assert ports_of(tsc.parse_ports('443')) == [443]
        assert ports_of(tsc.parse_ports(443)) == [443]
        assert ports_of(tsc.parse_ports('80,443')) == [80, 443]
        assert ports_of(tsc.parse_ports(' 80 , 443 ')) == [80, 443]
        assert ports_of(tsc.parse_ports('1000-1003')) == [1000, 1001, 1002, 1003]
        assert ports_of(tsc.parse_ports([80, '443', '8000-8001'])) == [80, 443, 8000, 8001]
        assert ports_of(tsc.parse_ports(('22', 22))) == [22]
        assert ports_of(tsc.parse_ports('0')) == [0]
        assert ports_of(tsc.parse_ports('65535')) == [65535]
        assert ports_of(tsc.parse_ports('7-7')) == [7]
        table = tsc.parse_ports('0-65535')
        assert len(table) == 65536 and all(table)

    def test_parse_ports_bad_values(self):
        for spec, bad in (('abc', 'abc'), ('80,abc', 'abc'), ('80-', '80-'), ('-80', '-80'), ('+80', '+80'),
                          ('1.5', '1.5'), ('80 443', '80 443'), ('0x50', '0x50'), (',', ''), ('80,,443', ''),
                          (['80', 'x'], 'x'), ('80-90-100', '80-90-100'), ('--', '--')):
            raises(tsc.ArgumentError, [repr(bad)], tsc.parse_ports, spec)

    def test_parse_ports_out_of_range(self):
        for spec in ('65536', '70000', '100-80', '0-65536', '99999999999999999999'):
            raises(tsc.ArgumentError, [repr(spec), 'out of range'], tsc.parse_ports, spec)
        raises(tsc.ArgumentError, ["'65536'"], tsc.parse_ports, 65536)
        raises(tsc.ArgumentError, ["'-1'"], tsc.parse_ports, -1)

    def test_count_states_rejects_bad_arguments(self):
        raises(tsc.ArgumentError, ["'ipv5'", 'ipv4'], tsc.count_states, None, 'ipv5')
        raises(tsc.ArgumentError, ["'bogus'", 'netlink'], tsc.count_states, None, 'all', None, None, 'bogus')
        raises(tsc.ArgumentError, ["'x'"], tsc.count_states, None, 'all', 'x')
        raises(tsc.ArgumentError, ["'70000'"], tsc.count_states, None, 'all', None, '70000')
        raises(tsc.ArgumentError, ["'nope'"], tsc.count_states, ['nope'])

    def test_messages_cap_long_values(self):
        """A value the user gave is echoed cut after 64 characters, with its length (a list as the module passes it)."""
        long_name = 'x' * 1000
        for exc_words, function, args in (
                (["'" + 'x' * 64 + "'...(1000 chars)"], tsc.normalize_state, (long_name,)),
                (['...(1000 chars)'], tsc.count_states, (None, long_name)),
                (['...(1000 chars)'], tsc.count_states, (None, 'all', None, None, long_name)),
                (["'" + 'y' * 64 + "'...(500 chars)", "['80', 'yyy"], tsc.parse_ports, (['80', 'y' * 500],)),
                (["'" + '9' * 64 + "'...(300 chars)", 'out of range'], tsc.parse_ports, ('9' * 300,))):
            exc = raises(tsc.ArgumentError, exc_words, function, *args)
            assert len(str(exc)) < 400, (function.__name__, len(str(exc)))
        exc = raises(tsc.ArgumentError, ["'" + 'x' * 64 + "'"], tsc.normalize_state, 'x' * 64)
        assert 'chars)' not in str(exc), 'a value of 64 characters is shown whole: {0}'.format(exc)

    def test_counts_json(self):
        counts = dict((name, index) for index, name in enumerate(NETSTAT_NAMES))
        text = tsc.counts_json(counts)
        assert json.loads(text) == counts
        assert text.index('"ESTABLISHED"') < text.index('"LISTEN"') < text.index('"CLOSING"')


if __name__ == '__main__':
    unittest.main()
