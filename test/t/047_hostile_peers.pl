# What a node accepts from a peer (issue 8, items 3, 4, 6 and 10):
#  - a hot standby refuses to serve: it cannot tell which of its primary's
#    serials are final, and a vector it made up would hide the primary's
#    next changes for good;
#  - a change whose values do not fit this node's columns, or whose key is
#    not this table's primary key, is refused as an INSERT would refuse it,
#    and numbers are rounded as an INSERT rounds them;
#  - a table dropped on its origin does not stop a node that never had it;
#  - a hostile peer cannot make this node take changes of its own current
#    replica ID, cap another node's ID out of reach, pin a row with an
#    infinite stamp time, or flood the vector with fake replica IDs.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use ReplstampTest;
require_programs('pg_basebackup');

my $common = q{
	CREATE EXTENSION replstamp;
	CREATE TABLE t (id int PRIMARY KEY, n int);
	SELECT replstamp.track('t');
};
# The schema drifts between nodes on purpose: schema changes stay local.
my @local_ddl = ('replstamp.replicate_ddl = off');
my $a = replstamp_node('a', init => { allows_streaming => 1 }, conf => \@local_ddl, sql => $common . q{
	CREATE TABLE drift (id int PRIMARY KEY, code varchar(12), amount numeric(8,3));
	CREATE TABLE regional (id int, region text, v text, PRIMARY KEY (id, region));
	SELECT replstamp.track('drift'); SELECT replstamp.track('regional');
});
my $p = replstamp_node('p', conf => \@local_ddl, sql => $common . q{
	CREATE TABLE drift (id int PRIMARY KEY, code varchar(5), amount numeric(6,1));
	CREATE TABLE regional (id int PRIMARY KEY, region text, v text);
	SELECT replstamp.track('drift'); SELECT replstamp.track('regional');
});
my $evil = replstamp_node('evil', conf => \@local_ddl, sql => $common);
sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }
my $a_id = sq($a, 'SELECT replica_id FROM replstamp.node');
my $p_id = sq($p, 'SELECT replica_id FROM replstamp.node');
my $evil_id = sq($evil, 'SELECT replica_id FROM replstamp.node');
sub rows { my ($n, $where) = @_; return sq($n, "SELECT count(*) FROM t WHERE $where"); }
sub vector_of { my ($id) = @_; return sq($p, "SELECT coalesce(max(serial), 0) FROM replstamp.vector WHERE replica_id = '$id'"); }

# Item 3: a streaming standby of a.
sq($a, 'INSERT INTO t SELECT g, g FROM generate_series(1, 10) g');
$a->backup('bk');
my $sb = PostgreSQL::Test::Cluster->new('sb');
$sb->init_from_backup($a, 'bk', has_streaming => 1);
$sb->start;
sq($a, 'INSERT INTO t VALUES (11, 11)');
$a->wait_for_catchup($sb);
is($sb->safe_psql('postgres', 'SELECT count(*) FROM t'), '11', 'the standby has replayed a\'s rows');
add_peer($p, 'sb', $sb);
my ($rc, $out, $err) = $p->psql('postgres', "SELECT replstamp.sync('sb')");
like($err, qr/ERROR:  cannot serve changes while the server is in recovery/,
	'pulling from a hot standby fails: it refuses to serve while in recovery');
is(vector_of($a_id), '0', 'and nothing of a\'s replica ID is recorded in the puller\'s vector');
is(rows($p, 'true'), '0', 'nor applied');

# Item 10: a table a creates, writes and drops before p ever pulls.
sq($a, q{CREATE TABLE gone (id int PRIMARY KEY); SELECT replstamp.track('gone');
	INSERT INTO gone VALUES (1), (2), (3); DROP TABLE gone});
# a writes on; p pulls from a itself.
sq($a, 'INSERT INTO t SELECT g, g FROM generate_series(12, 15) g');
add_peer($p, 'a', $a);
($rc, $out, $err) = $p->psql('postgres', "SELECT replstamp.sync('a')");
is($out, '15', "p's first sync from a: a table dropped on a does not stop it");
is(rows($p, 'true'), '15', 'every row of a arrives, the ones written after the standby was asked too');
is(vector_of($a_id), sq($a, 'SELECT replstamp.next_serial() - 1'), 'p holds a\'s ID up to what a handed out');
is(sq($a, 'SELECT replstamp.prune() >= 0'), 't', 'a prunes');
is(sq($a, "SELECT count(*) FROM replstamp.changes WHERE relation = 'public.gone'"), '0',
	"and the dropped table's changes leave a's log");

# Item 4: schema drift between a and p.
sq($a, "INSERT INTO drift VALUES (1, 'abcdefghijkl', 12.345)");
($rc, $out, $err) = $p->psql('postgres', "SELECT replstamp.sync('a')");
like($err, qr/ERROR:  value too long for type character varying\(5\)/,
	'a value too long for varchar(5) is refused, as an INSERT refuses it');
is(sq($p, 'SELECT count(*) FROM drift'), '0', 'and nothing is written');
sq($p, 'ALTER TABLE drift ALTER COLUMN code TYPE varchar(12)');
sq($p, "SELECT replstamp.sync('a')");
is(sq($p, 'SELECT code || \' \' || amount FROM drift WHERE id = 1'), 'abcdefghijkl 12.3',
	'once the column is wide enough, the row arrives whole');
is(sq($p, 'SELECT amount FROM drift WHERE id = 1'),
	sq($p, "BEGIN; INSERT INTO drift VALUES (-1, 'x', 12.345) RETURNING amount; ROLLBACK"),
	'12.345 in numeric(6,1) is rounded as a local INSERT rounds it');
sq($a, "INSERT INTO drift VALUES (2, 'ok', 99999.99)");
($rc, $out, $err) = $p->psql('postgres', "SELECT replstamp.sync('a')");
like($err, qr/ERROR:  numeric field overflow/, '99999.99, which rounds to 100000.0, is refused by numeric(6,1)');
sq($p, 'ALTER TABLE drift ALTER COLUMN amount TYPE numeric(8,3)');
sq($p, "SELECT replstamp.sync('a')");

sq($a, "INSERT INTO regional VALUES (1, 'eu', 'x')");
($rc, $out, $err) = $p->psql('postgres', "SELECT replstamp.sync('a')");
like($err, qr/ERROR:  the row key of table public\.regional differs between peer "a" and this node\nDETAIL:  The peer identifies its rows by \(id, region\), this node by \(id\)\./,
	'a primary key (id, region) against (id): a clear error naming both');
is(sq($p, 'SELECT count(*) FROM regional'), '0', 'and nothing is written');
# The key of a tracked table changes only untracked (the DDL guard refuses
# it otherwise, since 1.2).
sq($p, q{BEGIN; SELECT replstamp.untrack('regional');
	ALTER TABLE regional DROP CONSTRAINT regional_pkey, ADD PRIMARY KEY (id, region);
	SELECT replstamp.track('regional'); COMMIT});
sq($p, "SELECT replstamp.sync('a')");
sq($a, "DELETE FROM regional WHERE id = 1");
sq($p, "SELECT replstamp.sync('a')");
is(sq($p, 'SELECT count(*) FROM regional'), '0', 'with the same key on both nodes, a DELETE deletes');

# Item 6: a hostile peer.  A superuser there forges its catalog.
add_peer($p, 'evil', $evil);
sq($evil, 'INSERT INTO t VALUES (1000, 1000)');
is(sq($p, "SELECT replstamp.sync('evil')"), '1', 'p pulls from evil while it behaves');

# (a) Changes under p's own current replica ID.  Within what p handed out:
# a change with the stamp of one of p's own changes is not pulled.
sq($p, 'INSERT INTO t VALUES (2001, 0)');
my $p_issued = sq($p, 'SELECT replstamp.next_serial() - 1');
sub forge_own
{
	my ($serial) = @_;
	sq($evil, qq{
		INSERT INTO replstamp.changes (replica_id, serial, relation, op, pk, row_image, changed_at, row_hash, applied)
		SELECT '$p_id', $serial, relation, op, '{"id": 666}', '{"id": 666, "n": 666}', now(), row_hash, true
		  FROM replstamp.changes WHERE replica_id = '$evil_id' LIMIT 1;
		INSERT INTO replstamp.vector_state (replica_id, serial) VALUES ('$p_id', $serial)});
}
forge_own($p_issued);
sq($p, "SELECT replstamp.sync('evil')");
is(sq($p, "SELECT pk FROM replstamp.changes WHERE replica_id = '$p_id' AND serial = $p_issued"), '{"id": 2001}',
	"a change stamped with p's own current replica ID is not taken in place of p's own");
is(rows($p, 'id = 666'), '0', 'nor applied');
sq($evil, "DELETE FROM replstamp.changes WHERE replica_id = '$p_id'; DELETE FROM replstamp.vector_state WHERE replica_id = '$p_id'");

# Beyond what p handed out (the 1.0 puller took it, and its next local
# INSERT collided with it).  p cannot tell a hostile peer from its own
# data having gone back in time: it rotates, so its current ID never
# holds a change it did not make, and it stamps on under the new one.
forge_own($p_issued + 3);
($rc, $out, $err) = $p->psql('postgres', "SELECT replstamp.sync('evil')");
like($err, qr/WARNING:  replstamp: peer "evil" holds changes of this node's replica ID $p_id that this data set does not have/,
	'a claim of p\'s own replica ID beyond what p handed out is reported');
my $p_now = sq($p, 'SELECT replica_id FROM replstamp.node');
isnt($p_now, $p_id, 'and p stamps under a new replica ID from now on');
is(sq($p, "SELECT count(*) FROM replstamp.changes WHERE replica_id = '$p_now' AND applied"), '0',
	"nothing under p's current replica ID came from a peer");
sq($p, 'INSERT INTO t VALUES (' . (2001 + $_) . ', 0)') for (1 .. 5);
is(rows($p, 'id BETWEEN 2002 AND 2006'), '5', "p's next local inserts are stamped as usual");
sq($evil, "DELETE FROM replstamp.changes WHERE replica_id = '$p_id'; DELETE FROM replstamp.vector_state WHERE replica_id = '$p_id'");

# (b) Another node's current replica ID claimed at the largest serial.
sq($evil, "INSERT INTO replstamp.vector_state (replica_id, serial) VALUES ('$a_id', 9223372036854775807)");
my $a_before = vector_of($a_id);
($rc, $out, $err) = $p->psql('postgres', "SELECT replstamp.sync('evil')");
is(vector_of($a_id), $a_before, "a claim of a's ID up to 2^63-1 is clamped to what a itself said it handed out");
sq($a, 'INSERT INTO t SELECT g, g FROM generate_series(16, 20) g');
is(sq($p, "SELECT replstamp.sync('a')"), '5', 'so p still pulls a\'s next changes from a');
sq($evil, "DELETE FROM replstamp.vector_state WHERE replica_id = '$a_id'");

# (c) A stamp time that is not finite, or far in the future.
for my $when ('infinity', '2100-01-01') {
	sq($evil, 'INSERT INTO t VALUES (1001, 1001)');
	sq($evil, "UPDATE replstamp.changes SET changed_at = '$when' WHERE (pk->>'id')::int = 1001");
	my $held = sq($p, "SELECT count(*) FROM replstamp.changes WHERE replica_id = '$evil_id'");
	($rc, $out, $err) = $p->psql('postgres', "SELECT replstamp.sync('evil')");
	like($err, $when eq 'infinity' ? qr/sent a malformed change\nDETAIL:  A stamp time is not finite\./
		: qr/sent a change stamped 2100-01-01 .*, more than replstamp.max_clock_skew ahead of this node's clock/,
		"a change stamped $when is refused");
	is(sq($p, "SELECT count(*) FROM replstamp.changes WHERE replica_id = '$evil_id'"), $held, 'and not taken');
	is(rows($p, 'id = 1001'), '0', 'nor applied');
	sq($evil, "DELETE FROM replstamp.changes WHERE (pk->>'id')::int = 1001; DELETE FROM t WHERE id = 1001");
	sq($p, "SELECT replstamp.sync('evil')");
}
pass('once the peer sends sense, syncs from it work again');

# (d) 100,000 replica IDs nobody has heard of, in the handshake.
sq($evil, q{ALTER FUNCTION replstamp.serve(jsonb) RENAME TO serve_real;
	CREATE FUNCTION replstamp.serve(req jsonb) RETURNS jsonb LANGUAGE sql AS $$
		SELECT pg_catalog.jsonb_set(r, '{vector}', (r OPERATOR(pg_catalog.->) 'vector') OPERATOR(pg_catalog.||)
		       (SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('id', pg_catalog.gen_random_uuid(),
		               'serial', 1, 'count', 1, 'oldest', 0, 'epochs', '[]'::jsonb))
		          FROM pg_catalog.generate_series(1, 100000)))
		  FROM replstamp.serve_real(req) r $$});
my $vector_size = sq($p, 'SELECT count(*) FROM replstamp.vector');
my $epochs = sq($p, 'SELECT count(*) FROM replstamp.epoch');
my $t0 = time;
($rc, $out, $err) = $p->psql('postgres', "SELECT replstamp.sync('evil')");
my $took = time - $t0;
note sprintf('the refusal of 100,000 fake replica IDs took %.1f s', $took);
like($err, qr/peer "evil" advertises more than 1000 replica IDs this node has never seen/,
	'a handshake with 100,000 new replica IDs is refused');
is(sq($p, 'SELECT count(*) FROM replstamp.vector'), $vector_size, 'none of them enters the vector');

# (e) 100,000 dead epochs of replica IDs nobody has heard of: p would keep
# them and hand them on to every node that pulls from it.
sq($evil, q{CREATE OR REPLACE FUNCTION replstamp.serve(req jsonb) RETURNS jsonb LANGUAGE sql AS $$
		SELECT pg_catalog.jsonb_set(r, '{dead}', (r OPERATOR(pg_catalog.->) 'dead') OPERATOR(pg_catalog.||)
		       (SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(pg_catalog.gen_random_uuid(),
		               pg_catalog.gen_random_uuid(), 1))
		          FROM pg_catalog.generate_series(1, 100000)))
		  FROM replstamp.serve_real(req) r $$});
$t0 = time;
($rc, $out, $err) = $p->psql('postgres', "SELECT replstamp.sync('evil')");
note sprintf('the refusal of 100,000 dead epochs took %.1f s', time - $t0);
like($err, qr/peer "evil" advertises more than 1000 dead epochs this node has never seen/,
	'a handshake with 100,000 dead epochs is refused');
is(sq($p, 'SELECT count(*) FROM replstamp.epoch'), $epochs, 'none of them is kept');

# (f) The same from a hostile puller, in its request to serve(), with a's
# own replica ID in each: a would keep them and hand them on, and its
# honest pullers would refuse a from then on.
my $a_epochs = sq($a, 'SELECT count(*) FROM replstamp.epoch');
my $request = q{pg_catalog.jsonb_build_object('protocol', 3, 'version', '1.2',
	'replica_id', pg_catalog.gen_random_uuid(), 'label', 'mallory', 'issued', 0, 'now', 0,
	'vector', '[]'::jsonb, 'retired', '[]'::jsonb, 'rotated', false, 'dead', DEAD)};
($rc, $out, $err) = $a->psql('postgres', 'SELECT replstamp.serve(' . ($request =~ s/DEAD/(SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array('$a_id', pg_catalog.gen_random_uuid(), 1)) FROM pg_catalog.generate_series(1, 100000))/r) . ')');
like($err, qr/node "mallory" advertises more than 1000 dead epochs this node has never seen/,
	'a puller whose request names 100,000 dead epochs is refused');
is(sq($a, 'SELECT count(*) FROM replstamp.epoch'), $a_epochs, 'and a keeps none of them');

# (f2) A puller of replstamp 1.1 (sync protocol 2) would apply what it
# reads split into pages: refused, with what to do.
my $old_request = $request =~ s/'protocol', 3, 'version', '1\.2'/'protocol', 2, 'version', '1.1'/r;
($rc, $out, $err) = $a->psql('postgres', 'SELECT replstamp.serve(' . ($old_request =~ s/DEAD/'[]'::jsonb/r) . ')');
like($err, qr/node "mallory" runs replstamp 1\.1 \(sync protocol 2\), this node 1\.2 \(protocol 3\).*HINT:  Update replstamp on that node/s,
	'a 1.1 puller is refused, with a hint to update it');

sq($a, 'INSERT INTO t VALUES (21, 21)');
$t0 = time;
is(sq($p, "SELECT replstamp.sync('a')"), '1', 'honest syncs go on');
note sprintf('the next honest sync took %.1f s', time - $t0);

# (g) Big handshakes, within the limits: a node that holds 20,000 replica
# IDs (a long-lived mesh) describes itself to its peer and serves.
sq($p, q{INSERT INTO replstamp.vector_state (replica_id, serial)
	SELECT pg_catalog.gen_random_uuid(), 0 FROM pg_catalog.generate_series(1, 20000)});
sq($a, 'INSERT INTO t VALUES (22, 22)');
is(sq($p, "SELECT replstamp.sync('a')"), '1', 'a puller whose vector holds 20,000 replica IDs syncs');
sq($a, q{INSERT INTO replstamp.vector_state (replica_id, serial)
	SELECT pg_catalog.gen_random_uuid(), 0 FROM pg_catalog.generate_series(1, 20000)});
is(sq($a, 'SELECT pg_catalog.jsonb_array_length(replstamp.serve(' . ($request =~ s/DEAD/'[]'::jsonb/r)
	. q{) OPERATOR(pg_catalog.->) 'vector') > 20000}), 't', 'a node whose vector holds 20,000 replica IDs serves');
ok(!$_->log_contains(qr/terminated by signal/), $_->name . ': no process died') for ($a, $p, $evil);

$sb->stop;
$_->stop for ($a, $p, $evil);
done_testing();
