# A sync of a few changes reads a few rows of its peer's log, however long
# that log is.  The puller used to send the ranges it wanted as arrays to
# unnest; the serving node's planner then guessed that a third of its log
# lay above them and read all of it, for every sync: a sync's cost grew
# with the log, and at a steady 500 commits/s the lag crept up as the log
# filled.  auto_explain on the serving node shows the plan each sync got;
# the test asserts the log is read through its primary key, not scanned.
# (No timing: the plan is what made the time.)
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;

my $a = replstamp_node('a', sql => $TRACK_T,
	conf => ['replstamp.prune_interval = 0', "session_preload_libraries = 'auto_explain'",
		'auto_explain.log_min_duration = 0', 'auto_explain.log_nested_statements = off']);
my $b = replstamp_node('b', sql => $TRACK_T);
sub sq { my ($n, $sql) = @_; return $n->safe_psql('postgres', $sql); }

# A log of 30,000 changes, analyzed, all of them held by b.
sq($a, "INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 30000) g");
sq($a, 'ANALYZE replstamp.changes');
add_peer($b, 'a', $a);
is(sq($b, "SELECT replstamp.sync('a')"), '30000', 'the first sync pulls the whole log');

# The plans of the serving query (the one that reads the log in commit
# order) in a's log since $offset.
sub serve_plans
{
	my ($offset) = @_;
	my $log = slurp_file($a->logfile, $offset);
	my @plans;
	# auto_explain writes "duration: ... plan:" then the query and its plan,
	# up to the next log line.
	while ($log =~ /plan:\n(.*?)(?=^\S*\d{4}-\d\d-\d\d |\z)/msg)
	{
		my $p = $1;
		push @plans, $p if $p =~ /OVER \(PARTITION BY c\.xact\)/;
	}
	return @plans;
}

# Ten syncs of one change each.
my $offset = -s $a->logfile;
for my $i (1 .. 10)
{
	sq($a, "UPDATE t SET v = 'again $i' WHERE id = $i");
	is(sq($b, "SELECT replstamp.sync('a')"), '1', "sync $i of one change over a log of 30,000");
}
my @plans = serve_plans($offset);
is(scalar(@plans), 10, 'each sync ran the serving query once');
is(scalar(grep { /Seq Scan on changes/ } @plans), 0, 'no sync of one change scanned the whole log')
  or diag($plans[0]);
is(scalar(grep { /changes_pkey/ } @plans), 10, 'every one read it through its primary key');

is(sq($b, "SELECT string_agg(v, ',' ORDER BY id) FROM t WHERE id <= 10"),
	join(',', map { "again $_" } 1 .. 10), 'and b holds the changes');

$a->stop;
$b->stop;
done_testing();
