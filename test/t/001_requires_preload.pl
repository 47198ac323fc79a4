# CREATE EXTENSION replstamp refuses, with an error and a hint, on a server
# that did not preload the library; it works once the library is preloaded.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('nopreload');
$node->init;
$node->start;

my ($rc, $out, $err) = $node->psql('postgres', 'CREATE EXTENSION replstamp');
isnt($rc, 0, 'CREATE EXTENSION fails without shared_preload_libraries');
like($err, qr/replstamp must be loaded via shared_preload_libraries/,
	'the error says the library must be preloaded');
like($err, qr/HINT:.*shared_preload_libraries/, 'the hint says where to add it');
is($node->safe_psql('postgres',
		"SELECT count(*) FROM pg_namespace WHERE nspname = 'replstamp'"),
	'0', 'the failed CREATE EXTENSION left nothing behind');

$node->append_conf('postgresql.conf', "shared_preload_libraries = 'replstamp'");
$node->restart;
$node->safe_psql('postgres', 'CREATE EXTENSION replstamp');
is($node->safe_psql('postgres', 'SELECT state FROM replstamp.node'),
	'original', 'CREATE EXTENSION works once preloaded');

$node->stop;
done_testing();
