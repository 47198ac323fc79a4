/* replstamp--1.1--1.2.sql: from release 1.1 to 1.2 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION replstamp UPDATE TO '1.2'" to load this file. \quit
