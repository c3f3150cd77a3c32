// The spkv-studio tests run without a physical display: Qt's offscreen platform unless QT_QPA_PLATFORM says
// otherwise (e.g. xcb under xvfb-run). Settings (recent files) go to a test location of this process alone:
// ctest runs the tests as parallel processes, which would otherwise rewrite one another's recent files.
#include <gtest/gtest.h>

#include <QApplication>
#include <QFile>
#include <QSettings>
#include <QStandardPaths>
#include <cstdlib>
#include <unistd.h>

int main(int argc, char** argv) {
  if (!std::getenv("QT_QPA_PLATFORM")) setenv("QT_QPA_PLATFORM", "offscreen", 1);
  QStandardPaths::setTestModeEnabled(true);
  QApplication app(argc, argv);
  QApplication::setOrganizationName("spkv-tests");
  QApplication::setApplicationName(QString("spkv-studio-tests-%1").arg(getpid()));
  ::testing::InitGoogleTest(&argc, argv);
  const int rc = RUN_ALL_TESTS();
  QFile::remove(QSettings().fileName());
  return rc;
}
