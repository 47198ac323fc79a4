# CALL replstamp.backup(target) never writes a file under a shortened name.
# A target too long for the names PostgreSQL gives its files is refused
# before anything is written; a file of the cluster whose name would not fit
# below the target stops the backup before it copies anything; a target of
# the longest accepted length gives a backup pg_verifybackup accepts.
use strict;
use warnings;
use Cwd qw(realpath);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ReplstampTest;
require_programs('pg_verifybackup', 'pg_waldump');

my $node = replstamp_node('live', init => { allows_streaming => 1 });
my $pgdata = $node->data_dir;
my $base = realpath($node->basedir);

sub sq { my ($sql) = @_; return $node->safe_psql('postgres', $sql); }

sq(q{CREATE EXTENSION replstamp; CREATE TABLE t (id int PRIMARY KEY);
	SELECT replstamp.track('t'); INSERT INTO t SELECT generate_series(1, 100);});

# An absolute path of exactly $len bytes: $base/long/ddd.../ddd...
sub path_of_length
{
	my ($len) = @_;
	my $p = "$base/long";
	while ((my $left = $len - length($p)) > 0)
	{
		my $n = $left - 1 > 200 ? 200 : $left - 1;
		$n-- if $left - 1 - $n == 1;    # never leave room for a lone "/"
		$p .= '/' . ('d' x $n);
	}
	die "path_of_length($len) is " . length($p) unless length($p) == $len;
	return $p;
}

sub refused
{
	my ($target, $re, $what) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', "CALL replstamp.backup('$target')");
	isnt($ret, 0, "$what: refused");
	like($err, $re, "$what: the error says why");
	is(sq('SELECT state FROM replstamp.node'), 'original', "$what: the database stays original");
	is(sq('SELECT count(*) FROM pg_replication_slots'), '0', "$what: no slot is left");
	ok(!-e "$base/long", "$what: nothing is left on disk");
	return $err;
}

# The target of the report: 992 bytes.
my $err = refused(path_of_length(992), qr/backup target ".*" is too long/, 'a 992-byte target');
my ($longest) = $err =~ /HINT:  Choose a target path of at most (\d+) bytes/;
ok(defined $longest && $longest > 900 && $longest < 992,
	'the hint names the longest target that is accepted') or diag($err);
$longest //= 900;

# A file of the cluster with a long name: the target is short enough for
# what PostgreSQL names, not for this file.
my $longname = 'f' x 150;
open(my $fh, '>', "$pgdata/$longname") or die;
print $fh "x\n";
close $fh;
refused(path_of_length($longest - 20), qr/backup target ".*" is too long for the file "$longname"/,
	'a target too long for a file of the cluster');
unlink("$pgdata/$longname") or die;

# One byte more than the longest accepted target: refused.
refused(path_of_length($longest + 1), qr/is too long/, 'a target one byte too long');

# The longest accepted target works, and every name in it is whole.
my $target = path_of_length($longest);
my ($ret, $out);
($ret, $out, $err) = $node->psql('postgres', "CALL replstamp.backup('$target')");
is($ret, 0, "a target of $longest bytes is accepted") or diag($err);
$node->command_ok([ 'pg_verifybackup', $target ], 'pg_verifybackup accepts the backup it holds');
is(sq('SELECT state FROM replstamp.node'), 'original', 'and the database is original again');

$node->stop;
done_testing();
