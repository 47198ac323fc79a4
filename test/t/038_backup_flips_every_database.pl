# prepare_backup() and finish_backup() mark every database of the cluster,
# however many there are (issue 8, item 10: 1.0 refused more than 256).
# The databases are copies of a template that has replstamp: a copy stamps
# under a replica ID of its own, never under the template's, although the
# template was checked in this start of the server.
use strict;
use warnings;
use File::Temp qw(tempdir);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use ReplstampTest;

my $ndb = 300;
my $node = replstamp_node('many',
	conf => [ 'replstamp.prune_interval = 0', 'max_worker_processes = 72', 'log_statement = none' ],
	sql => 'CREATE EXTENSION replstamp; CREATE DATABASE tmpl');
$node->safe_psql('tmpl', q{CREATE EXTENSION replstamp;
	CREATE TABLE t (id int PRIMARY KEY); SELECT replstamp.track('t'); INSERT INTO t VALUES (1)});
# The copies go to a tablespace in memory where there is one: 300 copies
# of 8 MB each take seconds there, minutes on a busy disk.
my $tablespace = '';
if (-d '/dev/shm' && -w '/dev/shm')
{
	my $dir = tempdir('replstamp-038-XXXXXX', DIR => '/dev/shm', CLEANUP => 1);
	$node->safe_psql('postgres', "CREATE TABLESPACE in_memory LOCATION '$dir'");
	$tablespace = 'TABLESPACE in_memory';
}
my $t0 = time;
$node->safe_psql('postgres', join('',
	map { sprintf("CREATE DATABASE d%03d TEMPLATE tmpl STRATEGY FILE_COPY %s;\n", $_, $tablespace) } 1 .. $ndb));
note sprintf('%d databases created in %.1f s', $ndb, time - $t0);
my @all = ('postgres', 'tmpl', map { sprintf('d%03d', $_) } 1 .. $ndb);

# The template and a copy each write a row: two changes, two stamps.
$node->safe_psql($_, "INSERT INTO t VALUES (2)") for qw(tmpl d001);
my %stamps;
$stamps{$_} = $node->safe_psql($_, q{SELECT replica_id || '/' || serial FROM replstamp.changes
	WHERE (pk->>'id')::int = 2 AND NOT applied}) for qw(tmpl d001);
isnt($stamps{d001}, $stamps{tmpl}, "a copy of the template does not stamp under the template's replica ID");
isnt($node->safe_psql('d001', 'SELECT replica_id FROM replstamp.node'),
	$node->safe_psql('tmpl', 'SELECT replica_id FROM replstamp.node'), 'it took one of its own');

sub marked
{
	my ($err, $state) = @_;
	my ($names) = $err =~ /NOTICE:  marked '$state': (.*)/;
	my %marked = map { $_ => 1 } split /, /, $names // '';
	return scalar grep { $marked{$_} } @all;
}
sub state_of { my ($db) = @_; return $node->safe_psql($db, 'SELECT state FROM replstamp.node'); }

$t0 = time;
my ($rc, $out, $err) = $node->psql('postgres', "SELECT replstamp.prepare_backup('many')");
note sprintf('prepare_backup() took %.1f s', time - $t0);
is($rc, 0, "prepare_backup() succeeds in a cluster of ${\ scalar @all} databases");
is(marked($err, 'backup'), scalar @all, "and marks every one of them 'backup'");
is(join(',', map { state_of($_) } qw(postgres d001 d064 d065 d300)), join(',', ('backup') x 5),
	'as each database says, in the first batch of 64 and after it');

$t0 = time;
($rc, $out, $err) = $node->psql('postgres', 'SELECT replstamp.finish_backup()');
note sprintf('finish_backup() took %.1f s', time - $t0);
is($rc, 0, 'finish_backup() succeeds');
is(marked($err, 'original'), scalar @all, "and marks every one of them 'original' again");
is(join(',', map { state_of($_) } qw(postgres d001 d064 d065 d300)), join(',', ('original') x 5),
	'as each database says');
like($node->safe_psql('d300', "SELECT string_agg(retired_reason, ',') FROM replstamp.replica_history"),
	qr/^copied from another database$/, 'a copy checked by the flip took a replica ID of its own too');

$node->stop('immediate');
done_testing();
