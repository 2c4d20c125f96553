"""bench.common.established_inodes: the ESTABLISHED sockets a server holds on its port, as the
idle measurements count them from /proc/net/tcp. The kernel lists that table in pieces, not as
one snapshot, so a row can be listed twice while other sockets come and go (a test suite beside
the benchmark): each socket counts once."""

from __future__ import annotations

from bench.common import established_inodes


def row(sl: int, local_port: int, state: str, inode: str) -> str:
    """A row as the kernel writes it: sl, local, remote, state, queues, timer, retransmits,
    uid, timeout, inode, ..."""
    return (f"  {sl}: 0100007F:{local_port:04X} 0100007F:C350 {state} 00000000:00000000 "
            f"00:00000000 00000000     0        0 {inode} 1 0000000000000000 20 4 30 10 -1")


def test_a_socket_listed_twice_counts_once_and_only_established_ones_on_the_port_count() -> None:
    rows = [
        row(0, 1883, "0A", "100"),  # the listener
        row(1, 1883, "01", "101"),
        row(2, 1883, "01", "102"),
        row(3, 1883, "01", "101"),  # listed again: the table changed between two reads
        row(4, 1883, "08", "103"),  # CLOSE_WAIT
        row(5, 1884, "01", "104"),  # another port
        row(6, 1883, "01", "0"),  # no inode (a socket in TIME_WAIT's place)
    ]
    assert established_inodes(rows, 1883, None) == {"101", "102"}
    assert established_inodes(rows, 1883, {"102", "104"}) == {"102"}
