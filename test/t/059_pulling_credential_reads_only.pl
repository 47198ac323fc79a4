# A pulling credential reads changes and nothing more (issue 20, items
# 1-5).  mallory holds exactly what a pulling node needs (EXECUTE on
# replstamp.serve(jsonb), SELECT on replstamp.changes) and calls serve()
# with whatever it likes:
#  1. dead epochs nobody has heard of, 1,000 a call (the per-call limit),
#     call after call: a kept them and every honest puller refused a;
#  2. a claim to hold a's own current replica ID beyond what a handed
#     out: a rotated at every call;
#  3. a third node's live epoch, read from serve()'s own answer, sent back
#     as dead: a re-issued all of that node's changes under its own ID;
#  4. serve() under an honest puller's replica ID, claiming the whole
#     vector: a took it as that puller's record, pruned what it lacked;
# and, trusted (REPLICATION) but another role than the honest puller's,
# the same as 4.  None of it changes anything now: only a trusted role's
# requests are acted on, and a puller's record is bound to its role.
# (Item 5, a hostile peer's purged marks, is 078_hostile_purged_marks.pl.)
#
# Copyright (c) 2026, the replstamp authors
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

my ($a, $b, $c) = map { replstamp_node($_, sql => $ReplstampTest::TRACK_T) } qw(a b c);
sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }
my $a_id = sq($a, 'SELECT replica_id FROM replstamp.node');
my $b_id = sq($b, 'SELECT replica_id FROM replstamp.node');
my $c_id = sq($c, 'SELECT replica_id FROM replstamp.node');

# a pulls from c; b pulls from a (as the bootstrap superuser: trusted).
add_peer($a, 'c', $c);
add_peer($b, 'a', $a);
sq($c, q{INSERT INTO t SELECT g, 'c' FROM generate_series(1, 50) g});
sq($a, q{INSERT INTO t SELECT g, 'a' FROM generate_series(101, 150) g});
is(sq($a, "SELECT replstamp.sync('c')"), '50', 'a holds c\'s changes');
is(sq($b, "SELECT replstamp.sync('a')"), '100', 'b pulls from a');

sq($a, q{CREATE ROLE mallory LOGIN;
	GRANT EXECUTE ON FUNCTION replstamp.serve(jsonb) TO mallory;
	GRANT SELECT ON replstamp.changes TO mallory;
	CREATE ROLE trudy LOGIN REPLICATION;
	GRANT EXECUTE ON FUNCTION replstamp.serve(jsonb) TO trudy;
	GRANT SELECT ON replstamp.changes TO trudy;});

# serve() as $role with a request whose parts are SQL expressions.
sub serve_as
{
	my ($role, %part) = @_;
	my $req = sprintf(
		q{pg_catalog.jsonb_build_object('protocol', 3, 'version', '1.2', 'replica_id', %s, 'label', 'mallory',
			'issued', 0, 'now', 0, 'vector', %s, 'retired', '[]'::jsonb, 'rotated', false, 'dead', %s, 'purged', '[]'::jsonb)},
		$part{id} // 'pg_catalog.gen_random_uuid()',
		$part{vector} // q{'[]'::jsonb},
		$part{dead} // q{'[]'::jsonb});
	my ($rc, $out, $err) = $a->psql('postgres', "SET ROLE $role; SELECT replstamp.serve($req)");
	return ($rc, $out, $err);
}
my $epochs = sq($a, 'SELECT count(*) FROM replstamp.epoch');
my $changes = sq($a, 'SELECT count(*) FROM replstamp.changes');
my $history = sq($a, 'SELECT count(*) FROM replstamp.replica_history');

# 1. Dead epochs, 1,000 a call, twice.
for (1 .. 2)
{
	my ($rc, $out, $err) = serve_as('mallory',
		dead => q{(SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(pg_catalog.gen_random_uuid(),
			pg_catalog.gen_random_uuid(), 1)) FROM pg_catalog.generate_series(1, 1000))});
	is($rc, 0, "an untrusted puller may still pull (call $_)");
	like($err, qr/pulls as role "mallory", which is not trusted.*ALTER ROLE mallory REPLICATION/s,
		"and is told in a WARNING that it is not trusted (call $_)");
}
is(sq($a, 'SELECT count(*) FROM replstamp.epoch'), $epochs, '1. a keeps none of 2,000 dead epochs an untrusted puller names');
sq($a, q{INSERT INTO t VALUES (151, 'a')});
is(sq($b, "SELECT replstamp.sync('a')"), '1', '1. an honest puller still pulls from a');

# 2. "You hold less of your own ID than I do", 20 times.
my $issued = sq($a, 'SELECT replstamp.next_serial() - 1');
for (1 .. 20)
{
	serve_as('mallory', vector => qq{pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object('id', '$a_id',
		'serial', $issued + 100, 'count', 0, 'oldest', 0,
		'epochs', pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_array(pg_catalog.gen_random_uuid(), 1))))});
}
is(sq($a, 'SELECT count(*) FROM replstamp.replica_history'), $history,
	'2. twenty claims to hold more of a\'s own ID than a made rotate nothing');
is(sq($a, 'SELECT replica_id FROM replstamp.node'), $a_id, '2. a keeps its replica ID');
ok($a->log_contains(qr/says it holds changes of this node's replica ID .* not acted on: role "mallory" is not trusted/),
	'2. the claim is logged as not acted on');

# 3. c's live epoch, read from serve()'s answer, sent back as dead.
my ($rc, $answer) = serve_as('mallory');
my ($c_epoch) = $answer =~ /"id": "\Q$c_id\E"[^\]]*?"epochs": \[\["([0-9a-f-]+)"/;
ok($c_epoch, "3. serve()'s answer shows c's epoch ($c_epoch)");
serve_as('mallory', dead => qq{pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_array('$c_id', '$c_epoch', 1))});
is(sq($a, "SELECT count(*) FROM replstamp.changes WHERE replica_id = '$c_id'") . '/'
	  . sq($a, "SELECT count(*) FROM replstamp.epoch WHERE replica_id = '$c_id' AND dead"),
	'50/0', '3. c\'s changes stay under c\'s ID, and its epoch stays live');
is(sq($a, 'SELECT count(*) FROM replstamp.changes'), $changes + 1, '3. nothing is re-issued');

# 4. serve() under b's replica ID, claiming everything.
my $b_record = sq($a,
	"SELECT string_agg(replica_id || ':' || serial, ',' ORDER BY replica_id) FROM replstamp.puller_vector WHERE puller = '$b_id'");
my $whole = qq{(SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('id', v.replica_id, 'serial', v.serial + 1000000,
	'count', 0, 'oldest', 0, 'epochs', '[]'::jsonb)) FROM replstamp.vector v)};
serve_as('mallory', id => "'$b_id'", vector => $whole);
is(sq($a,
	"SELECT string_agg(replica_id || ':' || serial, ',' ORDER BY replica_id) FROM replstamp.puller_vector WHERE puller = '$b_id'"),
	$b_record, '4. an untrusted role cannot rewrite an honest puller\'s record');
($rc, my $out, my $err) = serve_as('trudy', id => "'$b_id'", vector => $whole);
like($err, qr/another role pulls under that ID: its record is left as it is/,
	'4. a trusted role other than the puller\'s is warned off its record');
is(sq($a,
	"SELECT string_agg(replica_id || ':' || serial, ',' ORDER BY replica_id) FROM replstamp.puller_vector WHERE puller = '$b_id'"),
	$b_record, '4. and cannot rewrite it either');
is(sq($a, "SELECT role FROM replstamp.pullers WHERE replica_id = '$b_id'"), sq($a, 'SELECT current_user'),
	'4. replstamp.pullers shows the role b\'s record is bound to');
serve_as('trudy');
is(sq($a, q{SELECT count(*) FROM replstamp.pullers WHERE role = 'trudy'}), '1',
	'4. a trusted role is recorded as a puller under its own ID');
is(sq($a, q{SELECT count(*) FROM replstamp.pullers WHERE role = 'mallory'}), '0',
	'4. an untrusted one is not recorded at all: it holds nothing back');

ok(!$_->log_contains(qr/terminated by signal/), $_->name . ': no process died') for ($a, $b, $c);
done_testing();
