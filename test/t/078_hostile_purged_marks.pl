# A peer's purged marks are taken only as far as they are plausible
# (issue 20, item 5).  A peer says "the tombstones of replica ID X were
# dropped up to serial S" so that its pullers refuse, as it does, a node
# holding less of X.  A hostile peer (a superuser there forges its
# catalog) that echoes its puller's own vector back as dropped made the
# puller refuse every node one change behind it, in both directions,
# though nothing was pruned anywhere, and the marks spread to its pullers.
# A tombstone is dropped only once older than replstamp.tombstone_lifetime:
# the puller now takes a mark only up to the newest change of X it holds
# that is older than that, warns about the rest, and still takes a
# plausible mark, so a node that really is behind a dropped tombstone is
# still refused.
#
# Copyright (c) 2026, the replstamp authors
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

my @conf = ('replstamp.prune_interval = 0');
my ($a, $p, $q, $z, $evil) =
  map { replstamp_node($_, conf => \@conf, sql => $ReplstampTest::TRACK_T) } qw(a p q z evil);
sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }
my $a_id = sq($a, 'SELECT replica_id FROM replstamp.node');
add_peer($_, 'a', $a) for ($p, $q, $z, $evil);
add_peer($p, 'evil', $evil);
add_peer($p, 'q', $q);
add_peer($q, 'p', $p);
add_peer($z, 'p', $p);

sq($a, q{INSERT INTO t SELECT g, 'a' FROM generate_series(1, 10) g});
sq($z, "SELECT replstamp.sync('a')");
sq($a, 'DELETE FROM t WHERE id = 1');
my $s_del = sq($a, 'SELECT replstamp.next_serial() - 1');
sq($_, "SELECT replstamp.sync('a')") for ($q, $evil);
sq($a, q{INSERT INTO t VALUES (11, 'a')});
sq($p, "SELECT replstamp.sync('a')");
my $s_last = sq($a, 'SELECT replstamp.next_serial() - 1');
is(sq($p, "SELECT serial FROM replstamp.vector WHERE replica_id = '$a_id'"), $s_last,
	'p holds a\'s changes up to the last');
is(sq($q, "SELECT serial FROM replstamp.vector WHERE replica_id = '$a_id'"), $s_last - 1,
	'q is one change behind p');

# evil echoes p's whole vector back as dropped.
my $p_vector = sq($p, q{SELECT string_agg(format('(%L::uuid, %s)', replica_id, serial), ', ')
	FROM replstamp.vector WHERE serial > 0});
sq($evil, "INSERT INTO replstamp.purged (replica_id, serial) VALUES $p_vector
	ON CONFLICT (replica_id) DO UPDATE SET serial = EXCLUDED.serial");
my ($rc, $out, $err) = $p->psql('postgres', "SELECT replstamp.sync('evil')");
is($rc, 0, 'p syncs from evil') or diag($err);
like($err, qr/WARNING:  replstamp: peer "evil" says tombstones of replica ID $a_id were dropped up to serial $s_last, but this node holds no change of that ID older than replstamp.tombstone_lifetime/,
	'the implausible mark is named in a warning');
like($err, qr/HINT:  This node ignores the claim\./, 'and ignored');
is(sq($p, 'SELECT count(*) FROM replstamp.purged'), '0', 'p records no purged mark');

# The honest node one change behind p pulls from p and p from it.
sq($a, q{INSERT INTO t VALUES (12, 'a')});
sq($p, "SELECT replstamp.sync('a')");
($rc, $out, $err) = $q->psql('postgres', "SELECT replstamp.sync('p')");
is($rc, 0, 'q, one change behind p, still pulls from p') or diag($err);
sq($q, q{INSERT INTO t VALUES (13, 'q')});
($rc, $out, $err) = $p->psql('postgres', "SELECT replstamp.sync('q')");
is($rc, 0, 'and p still pulls from q') or diag($err);
is(sq($q, 'SELECT count(*) FROM t'), sq($p, 'SELECT count(*) FROM t'), 'p and q hold the same rows');

# A plausible mark is still taken.  With a lifetime of 1 s on p, a's
# changes up to its insert of row 12 are old enough for their tombstones
# to have been dropped; its insert of row 14 is not.
sq($p, "ALTER SYSTEM SET replstamp.tombstone_lifetime = '1s'; SELECT pg_reload_conf()");
sleep 2;
my $s_old = sq($a, 'SELECT replstamp.next_serial() - 1');
sq($a, q{INSERT INTO t VALUES (14, 'a')});
sq($p, "SELECT replstamp.sync('a')");
my $s_new = sq($a, 'SELECT replstamp.next_serial() - 1');
sq($evil, "UPDATE replstamp.purged SET serial = $s_new WHERE replica_id = '$a_id'");
($rc, $out, $err) = $p->psql('postgres', "SELECT replstamp.sync('evil')");
is($rc, 0, 'p syncs from evil again') or diag($err);
like($err, qr/were dropped up to serial $s_new, but this node holds changes of that ID older than replstamp.tombstone_lifetime only up to serial $s_old\n.*HINT:  This node takes the claim only that far\./,
	'a mark beyond the newest change older than the lifetime is cut back to it');
is(sq($p, "SELECT serial FROM replstamp.purged WHERE replica_id = '$a_id'"), $s_old,
	'p records a\'s changes up to the insert of row 12 as dropped');
sq($evil, "UPDATE replstamp.purged SET serial = $s_old WHERE replica_id = '$a_id'");
($rc, $out, $err) = $p->psql('postgres', "SELECT replstamp.sync('evil')");
unlike($err, qr/WARNING/, 'a plausible mark raises no warning');

# z holds a's changes only from before the delete: it could bring row 1
# back, and p refuses it as before.
($rc, $out, $err) = $z->psql('postgres', "SELECT replstamp.sync('p')");
like($err, qr/ERROR:  node "z" is too far behind to pull from here|ERROR:  .*too far behind/,
	'z, behind the dropped tombstone, is refused');
is(sq($z, 'SELECT count(*) FROM t WHERE id = 1'), '1', 'and keeps its copy of row 1 until rebuilt');
# q (whose vector moves past what a said it handed out only when a says
# so: test 047) catches up with a, then pulls from p.
sq($q, "SELECT replstamp.sync('a')");
($rc, $out, $err) = $q->psql('postgres', "SELECT replstamp.sync('p')");
is($rc, 0, 'q, which got the delete, is not') or diag($err);

$_->stop for ($a, $p, $q, $z, $evil);
done_testing();
