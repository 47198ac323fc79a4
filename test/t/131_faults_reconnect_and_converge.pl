# Faults between peers (issue 24, item 6), with the sync workers on (the
# defaults, replstamp.peer_timeout 3 s): b pulls from a through a TCP
# proxy this test can cut and restore, and from c directly.
#  1. A flapping link: the proxy is cut and restored again and again while
#     a writes.  Each cut shows in replstamp.peers (status failing,
#     last_error, next_retry_at, no wake-ups) and in replstamp.cluster;
#     each restore is found by the back-off without a hand on it, and b
#     ends with every row a wrote, once.
#  2. A peer that vanishes mid-stream: the link is cut while b applies a
#     long backlog page by page; what was committed stays, the sync goes
#     on from there once the link is back, no change is applied twice.
#  3. A peer that stops answering: every process of a is stopped
#     (SIGSTOP), so that it accepts connections and never answers.  The
#     waiting connection is given up after its timeout and replstamp.peers
#     shows it; the new connections are made without blocking, so c's
#     writes keep reaching b within seconds; once a goes on (SIGCONT), b
#     catches up by itself.
#  replstamp.sync() still pulls by hand throughout.
use strict;
use warnings;
use IO::Select;
use IO::Socket::INET;
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use ReplstampTest;

sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }

my $a = replstamp_node('a', defaults => 1, conf => ["listen_addresses = '127.0.0.1'"], sql => $TRACK_T);
my $b = replstamp_node('b', defaults => 1, conf => ["replstamp.peer_timeout = '3s'"], sql => $TRACK_T);
my $c = replstamp_node('c', defaults => 1, sql => $TRACK_T);

# --- A TCP proxy to a, in a child process: cut kills it (every
# connection through it ends, new ones are refused), restore starts it
# again on the same port.
my $proxy_port = PostgreSQL::Test::Cluster::get_free_port();
my $proxy_pid;
sub proxy_child
{
	my $listen = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $proxy_port,
		Proto => 'tcp', Listen => 64, ReuseAddr => 1) or POSIX::_exit(1);
	my $sel = IO::Select->new($listen);
	my %other;
	for (;;)
	{
		for my $s ($sel->can_read)
		{
			if ($s == $listen)
			{
				my $in = $listen->accept or next;
				my $out = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $a->port, Proto => 'tcp');
				if (!$out) { close $in; next; }
				$other{$in} = $out;
				$other{$out} = $in;
				$sel->add($in, $out);
				next;
			}
			# The other end of a pair closed in this round.
			my $o = $other{$s} or next;
			my $n = sysread($s, my $buf, 65536);
			if (!$n)
			{
				$sel->remove($s, $o);
				delete @other{ $s, $o };
				close $s;
				close $o;
				next;
			}
			while (length $buf)
			{
				my $w = syswrite($o, $buf);
				last unless defined $w;
				substr($buf, 0, $w, '');
			}
		}
	}
}
sub restore
{
	$proxy_pid = fork();
	die "fork: $!" unless defined $proxy_pid;
	if ($proxy_pid == 0)
	{
		# Never the parent's END blocks (they stop the nodes), even on an error.
		eval { proxy_child(); };
		POSIX::_exit(1);
	}
	# Up once it accepts.
	for (1 .. 100)
	{
		my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $proxy_port, Proto => 'tcp');
		if ($s) { close $s; return; }
		usleep(50_000);
	}
	die 'the proxy does not start';
}
sub cut
{
	kill 'KILL', $proxy_pid;
	waitpid($proxy_pid, 0);
	undef $proxy_pid;
	return;
}
END { kill 'KILL', $proxy_pid if $proxy_pid; }

restore();
sq($b, "SELECT replstamp.add_peer('a', 'host=127.0.0.1 port=$proxy_port dbname=postgres')");
add_peer($b, 'c', $c);
$b->poll_query_until('postgres', q{SELECT count(*) = 2 AND bool_and(wakeups) FROM replstamp.peers})
  or die 'b does not wait on a and c';

sub a_rows_on_b
{
	return sq($b, q{SELECT count(*) || ' ' || count(DISTINCT id) FROM t WHERE id < 1000000});
}
sub peer_a
{
	return sq($b, q{SELECT status || ' ' || wakeups || ' ' || (next_retry_at IS NOT NULL) || ' ' || coalesce(last_error, '')
		FROM replstamp.peers WHERE name = 'a'});
}

# --- 1. A flapping link.
my $written = 0;
for my $round (1 .. 4)
{
	sq($a, "INSERT INTO t SELECT g, 'round $round' FROM generate_series($written + 1, $written + 50) g");
	$written += 50;
	cut();
	sq($a, "INSERT INTO t SELECT g, 'cut $round' FROM generate_series($written + 1, $written + 50) g");
	$written += 50;
	$b->poll_query_until('postgres', q{SELECT status = 'failing' AND NOT wakeups AND next_retry_at IS NOT NULL
		FROM replstamp.peers WHERE name = 'a'})
	  or diag(peer_a());
	like(peer_a(), qr/^failing false true .*peer "a"/,
		"cut $round: replstamp.peers shows a failing, why, and when it is tried again");
	is(sq($b, q{SELECT status FROM replstamp.cluster WHERE name = 'a'}), 'failing', "cut $round: so does replstamp.cluster");
	restore();
	$b->poll_query_until('postgres', "SELECT count(*) = $written FROM t WHERE id < 1000000")
	  or diag(a_rows_on_b());
	is(a_rows_on_b(), "$written $written", "restore $round: b pulls every row a wrote, by itself, each once");
	$b->poll_query_until('postgres', q{SELECT status = 'ok' AND wakeups AND last_error IS NULL FROM replstamp.peers WHERE name = 'a'})
	  or diag(peer_a());
	like(peer_a(), qr/^ok true false $/, "restore $round: replstamp.peers shows a ok again");
}

# --- 2. A peer that vanishes mid-stream.
sq($b, q{ALTER SYSTEM SET replstamp.sync_batch_size = 100; ALTER SYSTEM SET replstamp.sync_delay = '50ms';
	SELECT pg_reload_conf()});
# Fifty transactions of 100 rows: pages end between them.
sq($a, join(';', map { "INSERT INTO t SELECT g, 'backlog' FROM generate_series($written + $_ * 100 + 1, $written + $_ * 100 + 100) g" } (0 .. 49)));
$written += 5000;
$b->poll_query_until('postgres', q{SELECT count(*) > 0 FROM t WHERE v = 'backlog'})
  or die 'the backlog does not start arriving';
cut();
my $partial = sq($b, q{SELECT count(*) FROM t WHERE v = 'backlog'});
ok($partial > 0 && $partial < 5000, "the link is cut in the middle of the backlog ($partial of 5000 applied)");
$b->poll_query_until('postgres', q{SELECT status = 'failing' FROM replstamp.peers WHERE name = 'a'})
  or diag(peer_a());
like(sq($b, q{SELECT last_error FROM replstamp.peers WHERE name = 'a'}),
	qr/peer "a"/, 'replstamp.peers shows the failure: ' . sq($b, q{SELECT last_error FROM replstamp.peers WHERE name = 'a'}));
is(sq($b, q{SELECT count(*) FROM t WHERE v = 'backlog'}) >= $partial ? 'kept' : 'lost', 'kept',
	'the pages committed before the cut stay');
restore();
$b->poll_query_until('postgres', "SELECT count(*) = $written FROM t WHERE id < 1000000")
  or diag(a_rows_on_b());
is(a_rows_on_b(), "$written $written", 'once the link is back, the sync goes on from there: every row, once');
my $a_id = sq($a, 'SELECT replica_id FROM replstamp.node');
is(sq($b, "SELECT count(*) FROM replstamp.changes WHERE replica_id = '$a_id'"),
	sq($a, "SELECT count(*) FROM replstamp.changes WHERE replica_id = '$a_id'"),
	"b holds as many of a's changes as a: none applied twice, none skipped");
sq($b, q{ALTER SYSTEM RESET replstamp.sync_batch_size; ALTER SYSTEM RESET replstamp.sync_delay;
	SELECT pg_reload_conf()});

# --- 3. A peer that stops answering.
$b->poll_query_until('postgres', q{SELECT bool_and(wakeups) FROM replstamp.peers})
  or die 'b does not wait on a and c again';
sq($a, "INSERT INTO t SELECT g, 'before stop' FROM generate_series($written + 1, $written + 20) g");
$written += 20;
$b->poll_query_until('postgres', "SELECT count(*) = $written FROM t WHERE id < 1000000")
  or diag(a_rows_on_b());
my @stopped = freeze_node($a);
my $stopped_at = time;
# Made while a is stopped: b cannot have it before a goes on.
$b->poll_query_until('postgres', q{SELECT status = 'failing' AND NOT wakeups FROM replstamp.peers WHERE name = 'a'})
  or diag(peer_a());
my $noticed = time - $stopped_at;
like(peer_a(), qr/^failing false true (peer "a" did not answer within \d+ s|could not connect to peer "a")$/,
	sprintf('a stopped: b gives up its waiting connection after its timeout (%.0f s) and shows a failing', $noticed));
ok($noticed < 60, 'within the wait (10 s) and replstamp.peer_timeout (3 s), give or take a try');

# While new connections to a hang (each until connect_timeout, 10 s),
# c's writes still reach b at once.
my $slowest = 0;
for my $i (1 .. 8)
{
	my $t0 = time;
	sq($c, "INSERT INTO t VALUES (" . (1000000 + $i) . ", 'from c while a is stopped')");
	$b->poll_query_until('postgres', "SELECT count(*) = 1 FROM t WHERE id = " . (1000000 + $i))
	  or die "c's write $i does not reach b";
	my $took = time - $t0;
	$slowest = $took if $took > $slowest;
	usleep(2_000_000);
}
ok($slowest < 5, sprintf("while a is stopped, each of c's writes reaches b within 5 s (slowest %.1f s)", $slowest));
ok(sq($b, q{SELECT next_retry_at IS NOT NULL FROM replstamp.peers WHERE name = 'a'}) eq 't',
	'replstamp.peers shows when a is tried again');
kill 'CONT', @stopped;
sq($a, "INSERT INTO t SELECT g, 'after stop' FROM generate_series($written + 1, $written + 20) g");
$written += 20;
$b->poll_query_until('postgres', "SELECT count(*) = $written FROM t WHERE id < 1000000")
  or diag(a_rows_on_b());
is(a_rows_on_b(), "$written $written", 'once a goes on, b catches up by itself: every row, once');
$b->poll_query_until('postgres', q{SELECT status = 'ok' AND last_error IS NULL FROM replstamp.peers WHERE name = 'a'})
  or diag(peer_a());
is(sq($b, q{SELECT status FROM replstamp.cluster WHERE name = 'a'}), 'not pulling',
	'and replstamp.cluster no longer shows it failing (not pulling: a does not pull from b)');

# A manual pull still works, and finds nothing left.
is(sq($b, q{SELECT replstamp.sync('a')}), '0', 'replstamp.sync() pulls by hand: nothing is left to pull');

cut();
done_testing();

