# replstamp.leave() and a sync of the leaving node that runs meanwhile.
# leave() asks each peer to pull what it lacks and drop the node, and
# drops the peers here at its end.  A sync of the leaving node that was
# under way pulled from a peer after that peer had dropped it, and the
# peer recorded it again as a puller: its replstamp.cluster listed the
# departed node ('pulls only') and that puller's vector held its pruning
# back for good (test 130 failed so on PostgreSQL 18).  leave() holds the
# node's sync lock now: it waits for the sync, and no new one starts.
#
# 1. d's sync from a pauses in its own handshake (the testing aid
# replstamp.debug_handshake_pause, set for the role it runs as) before it
# reaches a; d leaves meanwhile.
#
# 2. A sync of d that starts after leave() dropped the peers but before its
# transaction commits.  leave() released the lock at its return, so that
# sync took it and still saw a as a peer (test 130 failed so again on 18).
# The lock is held to the end of leave()'s transaction now; the statement
# that calls leave() here sleeps after it to widen that window.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }

my %n = map {
	$_ => replstamp_node($_, template => 1, conf => [ 'replstamp.prune_interval = 0' ], sql => $TRACK_T)
} qw(a d);
my ($a, $d) = @n{qw(a d)};
add_mesh($a, $d);
sq($a, q{INSERT INTO t VALUES (1, 'a')});
sq($d, q{INSERT INTO t VALUES (2, 'd')});
sq($a, q{SELECT replstamp.sync('d')});
sq($d, q{SELECT replstamp.sync('a')});
is(sq($a, q{SELECT count(*) FROM replstamp.pullers WHERE label LIKE 'd/%'}), '1', 'a knows d as a puller');

my $offset = -s $d->logfile;
my $out = '';
sq($d, q{CREATE ROLE slow_syncer LOGIN SUPERUSER;
	ALTER ROLE slow_syncer SET replstamp.debug_handshake_pause = 8000});
my $h = IPC::Run::start(
	[ 'psql', '-X', '-At', '-d', $d->connstr('postgres') . ' user=slow_syncer', '-c', q{SELECT replstamp.sync('a')} ],
	'>', \$out, '2>', \$out, IPC::Run::timeout(300));
$d->wait_for_log(qr/pausing the handshake for 8000 ms/, $offset);
my $left = sq($d, q{SELECT node || ' ' || action FROM replstamp.leave()});
is($left, 'a pulled from here, dropped there; dropped here', 'd leaves while its sync from a is under way');
$h->finish;
is(sq($a, q{SELECT count(*) FROM replstamp.pullers WHERE label LIKE 'd/%'}), '0',
	'a does not know d as a puller any more');
is(sq($a, q{SELECT string_agg(name, ',' ORDER BY name) FROM replstamp.cluster}), 'a',
	'replstamp.cluster on a lists a only');
is(sq($d, 'SELECT count(*) FROM replstamp.peer'), '0', 'd has no peer left');

# 2.
add_mesh($a, $d);
sq($a, q{SELECT replstamp.sync('d')});
sq($d, q{SELECT replstamp.sync('a')});
is(sq($a, q{SELECT count(*) FROM replstamp.pullers WHERE label LIKE 'd/%'}), '1', 'd pulls from a again');
my $out_leave = '';
my $hl = IPC::Run::start(
	[ 'psql', '-X', '-At', '-d', $d->connstr('postgres'), '-c',
	  q{WITH l AS MATERIALIZED (SELECT * FROM replstamp.leave()) SELECT count(*), pg_sleep(5) FROM l} ],
	'>', \$out_leave, '2>', \$out_leave, IPC::Run::timeout(300));
$d->poll_query_until('postgres', q{SELECT count(*) > 0 FROM pg_stat_activity WHERE wait_event = 'PgSleep'})
  or die 'leave() never reached its sleep';
my ($rc, $sync_out, $sync_err) = $d->psql('postgres', q{SELECT replstamp.sync('a')});
$hl->finish;
like($out_leave, qr/^1\|$/m, 'd leaves, then sleeps in the same transaction');
like($sync_err, qr/peer "a" does not exist/,
	'a sync of d started before that commits waits for it, and finds no peer a');
is(sq($a, q{SELECT count(*) FROM replstamp.pullers WHERE label LIKE 'd/%'}), '0',
	'a does not know d as a puller');

$_->stop for values %n;
done_testing();
