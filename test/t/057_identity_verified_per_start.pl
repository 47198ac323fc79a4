# The identity check counts once per start of the server and per database,
# whatever rolls back and however many databases there are (issue 9,
# item 4).
#
# 1. A copy restored from CALL replstamp.backup() starts with no worker
#    slot free for the identity check (max_worker_processes = 1, which the
#    launcher takes), so its first write checks in its own transaction;
#    a savepoint rolled back, or a PL/pgSQL block that catches an error,
#    undoes that check, and the next write checks again: the copy rotates
#    and every change it stamps carries the new ID.
# 2. More than 256 databases: a database whose identity was verified at
#    start counts as verified, however many others there are, so that in
#    a prepare_backup() window the live node's backends, reading the
#    'backup' mark, do not take it for a restore and rotate.
use strict;
use warnings;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

sub sq { my ($n, $sql, $db) = @_; return $n->safe_psql($db // 'postgres', $sql); }

# Part 2's databases are created in the background while part 1 runs.
my $n = replstamp_node('many', template => 1, conf => ['replstamp.prune_interval = 0']);
my @creators = map {
	my $from = $_ * 128 + 1;
	IPC::Run::start(
		[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $n->connstr('postgres') ],
		'<', \join('', map { "CREATE DATABASE filler$_ STRATEGY FILE_COPY;\n" } $from .. $from + 127),
		'>', \my $out, '2>', \my $err)
} (0, 1);

my $live = replstamp_node('live', template => 1, init => { allows_streaming => 1 },
	conf => ['replstamp.prune_interval = 0'], sql => q{CREATE EXTENSION replstamp;
	CREATE TABLE t (id int PRIMARY KEY, note text);
	SELECT replstamp.track('t');
	INSERT INTO t SELECT g, 'before the backup' FROM generate_series(1, 10) g;});
my $id = sq($live, 'SELECT replica_id FROM replstamp.node');
sq($live, "CALL replstamp.backup('" . $live->backup_dir . "/bk', label => 'nightly')");

my %first_write = (
	'a savepoint rolled back' => q{BEGIN;
		SAVEPOINT s;
		INSERT INTO t VALUES (1000, 'rolled back to the savepoint');
		ROLLBACK TO SAVEPOINT s;
		INSERT INTO t VALUES (1001, 'after the savepoint');
		COMMIT;},
	'a PL/pgSQL block that catches an error' => q{DO $$
		BEGIN
			BEGIN
				INSERT INTO t VALUES (1000, 'undone by the exception');
				RAISE EXCEPTION 'undo it';
			EXCEPTION WHEN raise_exception THEN NULL;
			END;
			INSERT INTO t VALUES (1001, 'after the exception block');
		END $$;});
my $i = 0;
for my $what (sort keys %first_write)
{
	my $c = PostgreSQL::Test::Cluster->new('copy' . ++$i);
	$c->init_from_backup($live, 'bk');
	# One worker slot, which the replstamp launcher takes (the logical
	# replication launcher is not registered).
	$c->append_conf('postgresql.conf', "max_worker_processes = 1\nmax_logical_replication_workers = 0\n");
	$c->start;
	$c->wait_for_log(qr/could not start the identity check of database/);
	pass("$what: no worker slot is left for the identity check");
	sq($c, $first_write{$what});
	my $now = sq($c, 'SELECT replica_id FROM replstamp.node');
	isnt($now, $id, "$what: the copy rotated");
	is(sq($c, 'SELECT state FROM replstamp.node'), 'original', "$what: it is 'original'");
	is(sq($c, "SELECT replica_id FROM replstamp.changes WHERE (pk->>'id')::int = 1001"), $now,
		"$what: the change after it carries the new ID");
	is(sq($c, "SELECT count(*) FROM replstamp.changes WHERE (pk->>'id')::int = 1000"), '0',
		"$what: the undone change left no stamp");
	sq($c, "INSERT INTO t VALUES (1002, 'next')");
	is(sq($c, "SELECT count(*) FROM replstamp.changes WHERE replica_id = '$id' AND (pk->>'id')::int > 1000"), '0',
		"$what: nothing after the restore carries the old ID");
	is(sq($c, 'SELECT count(*) FROM replstamp.replica_history'), '2', "$what: exactly one rotation");
	$c->stop;
}
$live->stop;

# 2. More databases than 1.0 had slots for: 256 without replstamp, then
# one with it, whose identity the launcher verifies at every start.
$_->finish or die 'CREATE DATABASE failed' for @creators;
is(sq($n, 'SELECT count(*) > 256 FROM pg_database WHERE datallowconn'), 't', 'more than 256 databases');
sq($n, 'CREATE DATABASE late STRATEGY FILE_COPY');
sq($n, q{CREATE EXTENSION replstamp; CREATE TABLE t (id int PRIMARY KEY);
	SELECT replstamp.track('t'); INSERT INTO t VALUES (1);}, 'late');
my $late_id = sq($n, 'SELECT replica_id FROM replstamp.node', 'late');
start_verified($n, sub { $n->restart }, 'late');
pass('the database created after 256 others is verified at start');
is(sq($n, 'SELECT count(*) FROM replstamp.epoch', 'late'), '2', 'and recorded the epoch of this start');
sq($n, "SELECT replstamp.prepare_backup('window')", 'late');
is(sq($n, 'SELECT state FROM replstamp.node', 'late'), 'backup', "it is marked 'backup'");
# Fresh backends, each writing for the first time.
for my $k (2 .. 4)
{
	sq($n, "INSERT INTO t VALUES ($k)", 'late');
}
is(sq($n, 'SELECT replica_id FROM replstamp.node', 'late'), $late_id,
	'backends writing for the first time in the backup window do not rotate the live node');
is(sq($n, "SELECT count(DISTINCT replica_id) FROM replstamp.changes", 'late'), '1', 'every stamp carries its ID');
ok(!$n->log_contains(qr/retired replica ID/), 'no rotation anywhere');
sq($n, 'SELECT replstamp.finish_backup()', 'late');
$n->stop;

done_testing();
