# pg_dump / pg_restore of a database with replstamp: what comes back.
# The restore is a new data set: CREATE EXTENSION gives it a new replica
# ID and an empty change log (replstamp.changes is not dumped), so it
# never hands out the source's serials.  What the user configured comes
# back: the peers with their connection strings (replstamp.peer), the
# changes chosen to skip (replstamp.skipped), the tracked tables (their
# triggers, re-registered as pg_restore re-enables them) and the tables
# that left (replstamp.tracked_table rows dropped or untracked).  The copy then
# replicates with the source's peers like any new node.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;
require_programs('pg_dump', 'pg_restore');

sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }
sub content { my ($n) = @_; return sq($n, q{SELECT string_agg(format('%s:%s', id, note), ',' ORDER BY id) FROM accounts}); }

my $setup = q{
	CREATE EXTENSION replstamp;
	CREATE TABLE accounts (id int PRIMARY KEY, note text);
	SELECT replstamp.track('accounts');
	CREATE TABLE notes (id int PRIMARY KEY, body text);
	SELECT replstamp.track('notes');
	CREATE TABLE gone (id int PRIMARY KEY);
	SELECT replstamp.track('gone');
};
my $a = replstamp_node('a', sql => $setup);
my $b = replstamp_node('b', sql => $setup);
add_peer($a, 'b', $b);
add_peer($b, 'a', $a);
sq($a, "INSERT INTO accounts SELECT g, 'a' FROM generate_series(1, 5) g; INSERT INTO notes VALUES (1, 'n')");
sq($b, "INSERT INTO accounts SELECT g, 'b' FROM generate_series(6, 10) g; INSERT INTO gone VALUES (1)");
sq($a, "SELECT replstamp.sync('b')");
sq($b, "SELECT replstamp.sync('a')");
# a stops tracking notes and drops gone, which b still has.
sq($a, "SELECT replstamp.untrack('notes'); DROP TABLE gone");
sq($b, "INSERT INTO gone VALUES (2)");
my $id_b = sq($b, 'SELECT replica_id FROM replstamp.node');
sq($a, "SELECT replstamp.skip('$id_b', 1000)");
my $id_a = sq($a, 'SELECT replica_id FROM replstamp.node');
my $conninfo_b = sq($a, "SELECT conninfo FROM replstamp.peer WHERE name = 'b'");

# Dump a, restore into a new cluster.
my $dump = $a->basedir . '/a.dump';
$a->command_ok([ 'pg_dump', '--format=custom', '--file', $dump, '--dbname', $a->connstr('postgres') ],
	'pg_dump of a database with replstamp');
my $c = replstamp_node('c');
my ($stdout, $stderr);
my $restored = IPC::Run::run([ 'pg_restore', '--exit-on-error', '--dbname', $c->connstr('postgres'), $dump ],
	'>', \$stdout, '2>', \$stderr);
ok($restored && $stderr eq '', 'pg_restore restores it without an error') or diag $stderr;

# Identity: a new data set.
my $id_c = sq($c, 'SELECT replica_id FROM replstamp.node');
isnt($id_c, $id_a, 'the restored database has a new replica ID');
is(sq($c, 'SELECT minted_reason FROM replstamp.replica_history'), 'created', 'minted by CREATE EXTENSION, its only one');
is(sq($c, 'SELECT count(*) FROM replstamp.changes') . '/' . sq($c, 'SELECT count(*) FROM replstamp.row_version'),
	'0/0', 'no stamps come back: replstamp.changes and row_version are not dumped');
is(sq($c, 'SELECT string_agg(replica_id::text, \',\') FROM replstamp.vector'), $id_c,
	'its vector holds only its own ID');
is(content($c), content($a), 'the rows of the tracked tables come back');

# What the user configured comes back.
is(sq($c, "SELECT name || ' ' || conninfo FROM replstamp.peer"), "b $conninfo_b",
	'the peers come back with their connection strings');
is(sq($c, 'SELECT p FROM replstamp.peer p'), sq($a, 'SELECT p FROM replstamp.peer p'),
	'and with the figures of the source\'s last sync, until the copy\'s own');
is(sq($c, 'SELECT replica_id || \'/\' || serial FROM replstamp.skipped'), "$id_b/1000",
	'so do the changes chosen to skip');
is(sq($c, q{SELECT string_agg(relation || ':' || state || ':' || coalesce(relid::regclass::text, '-'), ',' ORDER BY relation)
		FROM replstamp.tracked_table}),
	'public.accounts:tracked:accounts,public.gone:dropped:-,public.notes:untracked:-',
	'the tracked tables are registered again, and the tables that left are known');
is(sq($c, 'SELECT tracked_tables || \'/\' || tracked_tables_not_stamped FROM replstamp.status'), '1/0',
	'replstamp.status counts the tracked table');
my ($rc, $out, $err) = $c->psql('postgres', 'BEGIN; ALTER TABLE accounts RENAME TO renamed; ROLLBACK');
like($err, qr/cannot rename or move table public\.accounts because it is tracked/,
	'the DDL guard protects the restored table');

# The copy stamps under its own ID and replicates like a new node.
sq($c, "INSERT INTO accounts VALUES (100, 'copy')");
is(sq($c, "SELECT replica_id || '/' || serial FROM replstamp.changes"), "$id_c/1",
	'a change on the copy: its own ID, serial 1');
sq($c, 'SELECT replstamp.sync_all()');
is(sq($c, "SELECT coalesce(last_error, 'ok') FROM replstamp.peers"), 'ok',
	'the copy pulls from b, ignoring the changes of the tables a untracked or dropped');
add_peer($b, 'c', $c);
is(sq($b, "SELECT replstamp.sync('c')"), '1', 'b pulls the copy\'s change');
sq($a, "SELECT replstamp.sync('b')");
is(content($c), content($b), 'the copy and b hold the same rows');
is(content($a), content($b), 'so does a');
is(sq($a, 'SELECT replica_id FROM replstamp.node'), $id_a, 'the source keeps its replica ID');

$_->stop for ($a, $b, $c);
done_testing();
